"""DDIM inversion: our inverse step is diffusers' DDIMInverseScheduler step."""

import numpy as np
import torch
from diffusers import DDIMInverseScheduler

from zsharm.config import HarmonizeConfig
from zsharm.edit.diffusion import Run
from zsharm.edit.diffusion import image_to_tensor
from zsharm.edit.inversion import ddim_invert


def test_inversion_matches_diffusers_inverse_scheduler(tiny_pipe):
    steps = 5
    run = Run(pipe=tiny_pipe, config=HarmonizeConfig.paper(steps=steps, size=128), progress=False)
    rng = np.random.default_rng(0)
    image = image_to_tensor(__import__("PIL.Image").Image.fromarray(
        (rng.random((128, 128, 3)) * 255).astype(np.uint8)))
    ours = ddim_invert(run, image, "cat bright", torch.Generator().manual_seed(1))

    inverse = DDIMInverseScheduler.from_config(tiny_pipe.scheduler.config)
    inverse.set_timesteps(steps)
    with torch.no_grad():
        uncond = tiny_pipe.text_encoder(tiny_pipe.tokenizer([""], padding="max_length", max_length=77,
                                                            return_tensors="pt").input_ids)[0]
        latents = ours.latents[0]
        theirs = [latents]
        # DDIMInverseScheduler's step at timestep t moves from t - stride to t; its first step starts from a
        # clean latent (alpha 1), ours treats x_0 as the first timestep's latent: compare from its second step
        for t in inverse.timesteps[1:]:
            noise = tiny_pipe.unet(latents, t - inverse.config.num_train_timesteps // steps,
                                   encoder_hidden_states=uncond).sample
            latents = inverse.step(noise, t, latents).prev_sample
            theirs.append(latents)
    assert len(theirs) == len(ours.latents) == steps
    for a, b in zip(ours.latents, theirs):
        assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
    assert not torch.allclose(ours.latents[-1], ours.latents[0], atol=1e-2)  # the walk went somewhere


def test_uncond_only_inversion_matches_the_authors_batch(tiny_pipe):
    image = image_to_tensor(__import__("PIL.Image").Image.new("RGB", (128, 128), (120, 80, 40)))
    out = {}
    for fast in (False, True):
        cfg = HarmonizeConfig.paper(steps=4, size=128, inversion_batch_uncond_only=fast)
        run = Run(pipe=tiny_pipe, config=cfg, progress=False)
        out[fast] = ddim_invert(run, image, "cat bright", torch.Generator().manual_seed(3))
        images = run.counter.total("unet_images", "inversion")
        assert images == (3 if fast else 6)
    assert torch.allclose(out[True].x_t, out[False].x_t, atol=1e-5)
