"""Stage 2.1 - DDIM inversion: walk the clean latent up the noise schedule, keeping every latent.

With N DDIM steps the latents are x_0 (the VAE posterior sample) and x_1 ... x_{N-1} after each inverse
step. The last step is not taken: it would need alpha_bar beyond the schedule (the authors set it to 0, which
is far from its true ~0.003 and spoils the result), so denoising later starts from x_{N-1} at the second
timestep.
"""

from dataclasses import dataclass

import torch

from zsharm.edit.diffusion import (
    Run,
    encode_image,
    epsilon,
    progress,
    text_embeddings,
    timesteps,
    unet_noise,
)


@dataclass
class Inversion:
    latents: list          # [x_0, x_1, ..., x_{N-1}], each 1x4xhxw float32
    timesteps: torch.Tensor  # denoising order, e.g. [901, 801, ..., 1]

    @property
    def x_t(self):
        return self.latents[-1]

    def target_for_step(self, index: int):
        """The inverted latent that denoising step `index` (over timesteps[1:]) should land on."""
        return self.latents[-2 - index]


@torch.no_grad()
def ddim_invert(run: Run, image: torch.Tensor, prompt: str, generator: torch.Generator) -> Inversion:
    """DDIM inversion of `image` (1x3xHxW in [-1,1], at work size) under `prompt`."""
    cfg = run.config
    latents = encode_image(run, image, generator)
    # guidance 0 means only the unconditional prediction counts; the authors still run the conditional half
    rows = "uncond" if cfg.inversion_batch_uncond_only and cfg.inversion_guidance == 0 else "both"
    if rows == "both":
        context = torch.cat([text_embeddings(run, "inversion", [""]), text_embeddings(run, "inversion", [prompt])])
    else:
        context = torch.cat([text_embeddings(run, "inversion", [""])] * 2)
    ts = timesteps(run)
    stride = run.scheduler.config.num_train_timesteps // run.scheduler.num_inference_steps
    alphas = run.scheduler.alphas_cumprod
    all_latents = [latents]
    for t in progress(run, ts.flip(0)[:-1], "DDIM inversion"):
        with run.arithmetic("inversion"):
            noise = unet_noise(run, "inversion", latents, t, context, cfg.inversion_guidance, rows=rows)
        eps = epsilon(run, noise, t, latents)
        a_t = alphas[t]
        a_next = alphas[t + stride] if t + stride < len(alphas) else torch.tensor(0.0)
        x0 = 1 / torch.sqrt(a_t) * (latents - eps * torch.sqrt(1 - a_t))
        latents = x0 * torch.sqrt(a_next) + torch.sqrt(1 - a_next) * eps
        all_latents.append(latents)
    return Inversion(latents=all_latents, timesteps=ts)
