"""Stage 2.4 - foreground editing with Prompt-to-Prompt.

Source and target branches denoise together from the inverted latent, each with its refined text embedding and
the optimised null embedding of that timestep. The target branch takes the source branch's cross-attention
maps (all steps, all words) and self-attention maps (all steps, every resolution), so that only the
description changes the result. Replacement touches the conditional rows only.
"""

from dataclasses import dataclass

import numpy as np
import torch

from zsharm.edit.attention import AttentionReplace, AttentionStore, controlled_attention
from zsharm.edit.diffusion import (
    Run,
    ddim_step,
    decode_latents,
    progress,
    to_uint8,
    unet_noise,
)


@dataclass
class Edit:
    latents: list             # per step: 2 x 4 x h x w (source branch, target branch)
    images: np.ndarray        # 2 x H x W x 3 uint8: source branch (the reconstruction), edited branch
    maps: AttentionStore = None  # cross-attention maps of both branches, averaged over steps (if asked)


def replacement_steps(config) -> tuple:
    """(cross, self): for how many denoising steps the target takes the source's maps. The authors' schedule:
    cross maps for int(f * (steps + 1)) steps, self maps for int(f * steps)."""
    return (int(config.cross_replace_steps * (config.steps + 1)), int(config.steps * config.self_replace_steps))


@torch.no_grad()
def edit_with_prompt_to_prompt(run: Run, inversion, embeddings, uncond, keep_maps: bool = False) -> Edit:
    cfg = run.config
    store = None
    if keep_maps:
        h, w = inversion.x_t.shape[-2:]
        small = (h * 8 // cfg.attention_res_divisor) * (w * 8 // cfg.attention_res_divisor)
        store = AttentionStore(num_pixels=(small,), places=("down", "up"), self_attn=True)
    cross_steps, self_steps = replacement_steps(cfg)
    controller = AttentionReplace(cross_steps=cross_steps, self_steps=self_steps, store=store)
    latents = inversion.x_t.expand(2, *inversion.x_t.shape[1:])
    trajectory = []
    with controlled_attention(run.unet, controller, fused=run.fused):
        for index, t in enumerate(progress(run, inversion.timesteps[1:], "Prompt-to-Prompt edit")):
            context = torch.cat([uncond[index]] * 2 + [embeddings[index]])
            noise = unet_noise(run, "editing", latents, t, context, cfg.guidance)
            controller.step()
            latents = ddim_step(run, noise, t, latents)
            trajectory.append(latents)
    images = to_uint8(decode_latents(run, "editing", latents))
    return Edit(latents=trajectory, images=images, maps=store)
