"""A user's own pipeline is prepared as load_pipeline's is (DDIM from its own config, frozen, eval, quiet), and
one zsharm cannot drive is refused in one line naming what it supports."""

import json

import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from conftest import make_composite
from zsharm import model_folders, models
from zsharm.config import HarmonizeConfig
from zsharm.edit.iteration import run_iteration
from zsharm.errors import ZsharmError
from zsharm.models import load_pipeline, prepare_pipeline, tiny_configs, tiny_pipeline_dir

pytestmark = pytest.mark.usefixtures("one_thread")


def users_pipeline():
    """The tiny model as a user loads it with diffusers: SD 2 base's scheduler (PNDM), weights trainable."""
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir("tiny-tamed")), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.train()
    return pipe


def test_a_users_pndm_pipeline_runs_with_ddim_from_its_own_config_and_gets_no_gradients():
    pipe = users_pipeline()
    betas = pipe.scheduler.betas.clone()
    assert all(p.requires_grad for p in pipe.unet.parameters())
    image, mask = make_composite(96, 64)
    cfg = HarmonizeConfig.paper(use_edges=False, refine_iters=1, nulltext_max_inner=1, steps=2, size=64)
    run_iteration(pipe, image, mask, "cat bright", "cat winter dull", cfg, progress=False)
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert torch.equal(pipe.scheduler.betas, betas) and pipe.scheduler.config.steps_offset == 1
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert not module.training
        assert not any(p.requires_grad or p.grad is not None for p in module.parameters())
    assert pipe._progress_bar_config == {"disable": True}


def test_harmonizer_prepares_the_pipeline_it_is_given():
    from zsharm.harmonizer import Harmonizer
    harmonizer = Harmonizer(pipe=users_pipeline(), evaluator=None)
    assert type(harmonizer.pipe.scheduler).__name__ == "DDIMScheduler"
    assert not any(p.requires_grad for p in harmonizer.pipe.unet.parameters())


def one_line_refusal(pipe) -> str:
    with pytest.raises(ZsharmError) as info:
        prepare_pipeline(pipe)
    message = str(info.value)
    assert "\n" not in message and "Stable Diffusion 1.x / 2.x" in message
    return message


def test_sdxl_and_inpainting_pipelines_are_refused_in_one_line():
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    base = users_pipeline()
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**tiny_configs()["text_encoder"]))
    sdxl = StableDiffusionXLPipeline(vae=base.vae, text_encoder=base.text_encoder, text_encoder_2=text_2,
                                     tokenizer=base.tokenizer, tokenizer_2=base.tokenizer, unet=base.unet,
                                     scheduler=base.scheduler)
    assert "StableDiffusionXLPipeline" in one_line_refusal(sdxl)
    inpainting = StableDiffusionPipeline(**{**base.components,
                                            "unet": UNet2DConditionModel(**{**tiny_configs()["unet"], "in_channels": 9})})
    assert "9 input channels" in one_line_refusal(inpainting)
    with pytest.raises(ZsharmError, match="SD 1.x / 2.x|Stable Diffusion 1.x / 2.x"):
        from zsharm.harmonizer import Harmonizer
        Harmonizer(pipe=sdxl, evaluator=None)


def test_an_sdxl_folder_is_refused_before_its_weights_are_read(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}))
    with pytest.raises(ZsharmError, match="StableDiffusionXLPipeline.*Stable Diffusion 1.x / 2.x"):
        load_pipeline(str(tmp_path), device="cpu")


def test_revision_variant_and_token_reach_from_pretrained(monkeypatch):
    seen = {}
    real = StableDiffusionPipeline.from_pretrained

    def from_pretrained(spec, **kwargs):
        seen.update(kwargs, spec=spec)
        return real(str(tiny_pipeline_dir("tiny")), safety_checker=None, requires_safety_checker=False)

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)
    pipe = load_pipeline("someone/sd-fork", device="cpu", dtype=torch.float32, revision="v2", variant="fp16",
                         token="hf_secret")
    assert seen["spec"] == "someone/sd-fork" and seen["dtype"] == torch.float32
    assert (seen["revision"], seen["variant"], seen["token"]) == ("v2", "fp16", "hf_secret")
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    seen.clear()
    load_pipeline("someone/sd-fork", device="cpu", dtype=torch.float32)
    assert not {"revision", "variant", "token"} & set(seen)  # unset: the hub's own defaults


def test_two_processes_wanting_one_model_folder_build_it_once(tmp_path):
    import threading
    builds = []

    def build(path):
        builds.append(path)
        threading.Event().wait(0.2)  # long enough for the other to arrive while this one builds
        path.mkdir()
        (path / "model_index.json").write_text("{}")

    threads = [threading.Thread(target=model_folders.built_once, args=(tmp_path / "m", build)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert builds == [tmp_path / "m"]
