"""Model loading: tiny models through from_pretrained, the real CLIP tokenizer offline, clear errors."""

import pytest
import torch

from zsharm.errors import ZsharmError
from zsharm.models import build_tiny_pipeline, load_pipeline
from zsharm.edit.tokens import description_positions, split_object, word_token_spans


def test_tiny_is_seeded_and_deterministic(tmp_path):
    a = build_tiny_pipeline(tmp_path / "a", seed=0)
    b = build_tiny_pipeline(tmp_path / "b", seed=0)
    c = build_tiny_pipeline(tmp_path / "c", seed=1)
    pa, pb, pc = (load_pipeline(str(p), device="cpu", dtype=torch.float32) for p in (a, b, c))
    wa, wb, wc = (p.unet.conv_in.weight for p in (pa, pb, pc))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert type(pa.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in pa.unet.parameters())


def test_tiny_has_the_sd2_layout(tiny_pipe):
    unet = tiny_pipe.unet
    assert unet.config.cross_attention_dim == tiny_pipe.text_encoder.config.hidden_size
    assert [type(b).__name__ for b in unet.down_blocks][:3] == ["CrossAttnDownBlock2D"] * 3
    assert tiny_pipe.vae.config.scaling_factor == pytest.approx(0.18215)
    assert 2 ** (len(tiny_pipe.vae.config.block_out_channels) - 1) == 8


def test_real_clip_tokenizer_offline(tiny_pipe):
    tok = tiny_pipe.tokenizer
    # ids of the real CLIP vocabulary (the same as SD 2's tokenizer)
    assert tok("cat bright").input_ids == [49406, 2368, 4852, 49407]
    assert tok("cat greyscale").input_ids == [49406, 2368, 9190, 5879, 49407]


def test_word_positions_follow_multi_token_words(tiny_pipe):
    tok = tiny_pipe.tokenizer
    spans = word_token_spans(tok, "teddy bear greyscale shadowed")
    assert spans == [("teddy", [1]), ("bear", [2]), ("greyscale", [3, 4]), ("shadowed", [5, 6])]
    n = split_object("teddy bear greyscale", "teddy bear winter dull", {"greyscale", "winter", "dull"})
    assert n == 2
    assert description_positions(tok, "teddy bear greyscale", n) == [3, 4]
    assert split_object("cat bright", "cat winter") == 1
    with pytest.raises(ZsharmError):
        split_object("cat", "cat winter")
    with pytest.raises(ZsharmError):
        split_object("cat bright", "dog winter")


@pytest.mark.parametrize("spec", ["/nonexistent/folder/model", "model.txt", "EMPTY_DIR"])
def test_bad_model_specs_give_one_line_errors(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if spec == "model.txt":
        (tmp_path / spec).write_text("x")
        spec = str(tmp_path / spec)
    elif spec == "EMPTY_DIR":
        spec = str(tmp_path)
    with pytest.raises(ZsharmError) as info:
        load_pipeline(spec, device="cpu")
    assert "\n" not in str(info.value)
