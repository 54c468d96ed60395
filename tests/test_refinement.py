"""Text-embedding refinement (stage 2.2): the fused background embedding and the regulariser, by definition.

    fused target embedding at the background words' positions = sum_k w_k * Emb_k   (w after the softmax)
"""

from contextlib import contextmanager

import pytest
import torch
from conftest import make_composite

from zsharm.config import HarmonizeConfig
from zsharm.edit.iteration import run_iteration
from zsharm.edit.tokens import condition_vocabulary, description_positions, split_object

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE, TARGET = "cat bright", "cat winter greyscale"  # three background tokens: winter, grey, scale


@contextmanager
def recorded_text_encodings(text_encoder):
    outputs = []

    def hook(module, args, kwargs, output):
        outputs.append(output[0].detach().clone())

    handle = text_encoder.register_forward_hook(hook, with_kwargs=True)
    try:
        yield outputs
    finally:
        handle.remove()


def refined(pipe, config):
    image, mask = make_composite(width=128, height=128)
    return run_iteration(pipe, image, mask, SOURCE, TARGET, config, progress=False)


@pytest.mark.parametrize("schedule", ["paper", "fast"])
def test_fused_target_embedding_is_the_weighted_sum_of_the_background_words(tiny_pipe, schedule):
    cfg = HarmonizeConfig.named(schedule, steps=3, size=128, dtype="fp32", use_edges=False, refine_iters=2)
    with recorded_text_encodings(tiny_pipe.text_encoder) as encodings:
        res = refined(tiny_pipe, cfg)
    n_object = split_object(SOURCE, TARGET, condition_vocabulary())
    positions = description_positions(tiny_pipe.tokenizer, TARGET, n_object)
    others = [p for p in range(77) if p not in positions]
    assert len(positions) == 3
    for step, (embedding, weights) in enumerate(zip(res.refinement.embeddings, res.refinement.background_weights)):
        # the encoding of the optimised words this step ended with: every other position is kept from it
        ends = [e for e in encodings if e.shape[0] == 2 and torch.equal(e[0], embedding[0])
                and torch.equal(e[1, others], embedding[1, others])]
        assert ends, f"step {step}: no text-encoder output matches the refined embedding outside the fused words"
        words = ends[-1][1, positions]
        fused = (weights[:, None] * words).sum(0)
        for p in positions:
            assert torch.allclose(embedding[1, p], fused, atol=1e-6), step
        assert weights.sum().item() == pytest.approx(1.0, abs=1e-6) and (weights > 0).all()
        # a convex combination, not the words themselves: the fusion did something
        assert not torch.allclose(words, fused.expand_as(words), atol=1e-4)


def test_the_regulariser_holds_the_words_near_their_start(tiny_pipe):
    """A heavy weight on MSE(Emb, Emb_0) keeps the optimised word embeddings near their start; none lets them go."""
    base = HarmonizeConfig.paper(steps=3, size=128, dtype="fp32", use_edges=False, refine_iters=4, refine_lr=0.05)
    distance = {}
    for weight in (0.0, 1e4):
        res = refined(tiny_pipe, base.replace(refine_reg_weight=weight))
        late = [r for r in res.refinement.losses if r["step"] == base.steps - 2]
        distance[weight] = sum(r["reg_fg_mse"] + r["reg_bg_mse"] for r in late) / len(late)
        assert all(r["loss_reg"] == pytest.approx(weight * (r["reg_fg_mse"] + r["reg_bg_mse"]), rel=1e-5, abs=1e-12)
                   for r in res.refinement.losses)
    assert distance[1e4] < 0.2 * distance[0.0], distance


def test_the_attention_loss_is_zero_when_the_source_words_cover_the_mask_and_the_target_words_the_rest():
    """L_Emb as a function of the maps and the mask alone: each map divided by its maximum against M and 1-M."""
    from zsharm.edit.refinement import attention_loss
    mask = torch.zeros(4, 4)
    mask[1:3, 1:3] = 1
    map_fg, map_bg = torch.zeros(4, 4, 77), torch.zeros(4, 4, 77)
    map_fg[:, :, 2], map_fg[:, :, 3] = 0.3 * mask, 0.1 * mask        # two source words, summed
    map_bg[:, :, 5], map_bg[:, :, 6] = 0.2 * (1 - mask), 0.7 * (1 - mask)  # two target words, weighted
    weights = torch.tensor([0.5, 0.5])
    parts = attention_loss(map_fg, map_bg, [2, 3], [5, 6], weights, mask)
    assert parts["loss_emb"].item() == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(parts["a_bg"], 0.45 * (1 - mask))
    map_fg[0, 0, 2] = 0.3  # one pixel of the source's attention outside the object
    parts = attention_loss(map_fg, map_bg, [2, 3], [5, 6], weights, mask)
    assert parts["attn_fg"].item() == pytest.approx(0.75 ** 2 / 16)
    assert parts["attn_bg"].item() == pytest.approx(0.0, abs=1e-12)
