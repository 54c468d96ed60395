# %% [markdown]
# # 02 · DDIM inversion and null-text optimisation
#
# **What this notebook teaches.** To edit a *real* photo with a diffusion model we first need the noise that
# would have generated it. DDIM inversion finds a trajectory of latents from the image up to noise (step 2.1
# of the method). Denoising back with classifier-free guidance drifts away from that trajectory; null-text
# optimisation (step 2.3) learns one "empty prompt" embedding per step that cancels the drift, and the
# method adds an edge loss to it. We measure the reconstruction error at every step, with and without it.

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "stabilityai/stable-diffusion-2-base")
QUICK = os.environ.get("ZSHARM_QUICK") == "1"
STEPS = 4 if QUICK else 50
SIZE = 128 if QUICK else 512
DEVICE = None

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from zsharm.edit.blending import mask_at
from zsharm.config import HarmonizeConfig
from zsharm.io import load_image, load_mask, work_size
from zsharm.models import load_pipeline
from zsharm.teaching.setup import is_tiny, repo_root, TINY_NOTE
from zsharm.teaching.plots import show_images

ROOT = repo_root()
DATA = ROOT / "data"
plt.rcParams["figure.dpi"] = 90
if is_tiny(MODEL):
    print(TINY_NOTE)

pipe = load_pipeline(MODEL, device=DEVICE)
config = HarmonizeConfig.paper(steps=STEPS, size=SIZE)
image = load_image(DATA / "demo" / "composite.png").to_pil_rgb8()
mask = load_mask(DATA / "demo" / "mask.png", size=image.size)
source, target = "astronaut bright warm indoor", "astronaut dim blue twilight"
# the method works at a work size: long side config.size, both sides multiples of 64
work = image.resize(work_size(image.size, config.size), resample=Image.LANCZOS)
mask_work = mask_at(mask, work.size, config.mask_threshold)
print("work size", work.size)

# %% [markdown]
# ## DDIM, forwards and backwards
#
# Stable Diffusion works on a latent $z = \mathcal{E}(I)$, 8 times smaller than the image. With
# $\bar\alpha_t$ the noise schedule and $\epsilon_\theta(z_t, t, c)$ the UNet's noise prediction under text
# $c$, one deterministic DDIM step down from $t$ to $t-1$ is
#
# $$ z_{t-1} = \sqrt{\bar\alpha_{t-1}}\,\hat z_0 + \sqrt{1-\bar\alpha_{t-1}}\,\epsilon_\theta(z_t, t, c),
# \qquad \hat z_0 = \frac{z_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(z_t, t, c)}{\sqrt{\bar\alpha_t}} . $$
#
# **Inversion** runs the same formula upwards, from $t$ to $t+1$, using the noise predicted at $z_t$ in place
# of the (unknown) noise at $z_{t+1}$. That approximation is small when steps are small. The method inverts
# with guidance 0 (the unconditional prediction only) and keeps every latent $x_0, x_1, \dots, x_{N-1}$; the
# last step, to pure noise, is not taken (METHOD.md, stage 2 step 1).

# %%
from zsharm.edit.diffusion import decode_latents, Run, text_embeddings, to_uint8
from zsharm.edit.inversion import ddim_invert, image_to_tensor
from zsharm.teaching.plots import latent_preview

run = Run(pipe=pipe, config=config, progress=True)
inversion = ddim_invert(run, image_to_tensor(work), source, torch.Generator().manual_seed(config.seed))
print(f"{len(inversion.latents)} latents of shape {tuple(inversion.latents[0].shape)}; "
      f"denoising timesteps {inversion.timesteps.tolist()}")

shown = sorted(set(np.linspace(0, len(inversion.latents) - 1, min(5, len(inversion.latents))).astype(int)))
show_images([latent_preview(inversion.latents[i]) for i in shown], [f"x_{i}" for i in shown], size=3.0,
            suptitle="Inverted latents (first three channels), from the image (x_0) towards noise")
plt.show()

# %% [markdown]
# ## Denoising back: the drift
#
# Now we walk back down from $x_{N-1}$ and compare every latent with the inverted one it should land on.
# With guidance $w$ the noise used is $\epsilon_\theta(z_t, \varnothing) + w\,(\epsilon_\theta(z_t, c) -
# \epsilon_\theta(z_t, \varnothing))$. The editing step needs $w = 2.5$ so that the text matters, and the
# larger $w$, the further the walk drifts from the inverted trajectory.
#
# Even $w = 0$ does not retrace it exactly, for two reasons: inversion is an approximation (it uses the
# noise predicted at $z_t$ for the step to $z_{t+1}$), and zsharm follows the authors' schedule, which stops
# the inversion one step short of pure noise and starts denoising from $x_{N-1}$ at the *second* timestep,
# so each denoising step works one noise level off the inverted latent it starts from. Null-text
# optimisation absorbs both.

# %%
from zsharm.teaching.trace import denoise, latent_errors

with torch.no_grad():
    cond = text_embeddings(run, "notebook", [source])
    empty = text_embeddings(run, "notebook", [""])
errors = {}
for w in (0.0, config.guidance):
    errors[f"guidance {w:g}, empty null text"] = latent_errors(denoise(run, inversion, cond, empty, w), inversion)

# %% [markdown]
# ## Null-text optimisation, with the edge loss
#
# Null-text inversion (Mokady et al. 2023) keeps the guidance and instead optimises the unconditional
# ("null") embedding $\varnothing_t$ at every step so that the guided step lands on the inverted latent
# $z^*_{t-1}$. The method adds an edge loss on the decoded prediction $I'$ (notebook 05):
#
# $$ \min_{\varnothing_t}\; 10\,\lVert z_{t-1}(\varnothing_t) - z^*_{t-1} \rVert^2 + \mathcal{L}_{Edge},
# \qquad \mathcal{L}_{Edge} = \lVert E_S(I) - E_S(I') \rVert^2 + \gamma \lVert E_D(I) - E_D(I') \rVert^2 $$
#
# inside the mask, with AdamW at learning rate 0.1 and $\lfloor i/10 \rfloor + 1$ inner steps at step $i$.
# In the full method this runs *after* refinement, with the refined embeddings; here we use the plain
# prompt embeddings to isolate the idea.

# %%
from zsharm.edit.pidinet import load_pidinet
from zsharm.edit.nulltext import EdgeLoss, optimize_null_text

pidinet = load_pidinet(variant="tiny", device=run.device)
with torch.no_grad():
    pair = torch.cat([cond, text_embeddings(run, "notebook", [target])])
embeddings = [pair] * (len(inversion.timesteps) - 1)  # one (source, target) pair per denoising step
plain = optimize_null_text(run, inversion, embeddings, edge_loss=None)
edge_loss = EdgeLoss(run, work, mask_work, pidinet)
with_edges = optimize_null_text(run, inversion, embeddings, edge_loss=edge_loss)
errors[f"guidance {config.guidance:g}, null text optimised"] = latent_errors(plain.latents, inversion)
errors[f"guidance {config.guidance:g}, null text + edge loss"] = latent_errors(with_edges.latents, inversion)

fig, ax = plt.subplots(figsize=(8, 4))
for (name, err), marker in zip(errors.items(), "osD^"):
    ax.plot(np.arange(1, len(err) + 1), err, marker=marker, label=name)
ax.set_yscale("log")
ax.set_xlabel("denoising step (from noise towards the image)")
ax.set_ylabel("MSE to the inverted latent")
ax.set_title("Reconstruction error per step")
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# Read the curves from left (noise) to right (image): the error accumulates. Null-text optimisation exists
# to pull the guided trajectory back onto the inverted one, so its curve should lie below the plain
# guidance-2.5 curve; the edge loss may trade a little latent error for edges that match the input. (On the
# tiny model the text encoder is random, so guidance barely changes the prediction and the curves nearly
# coincide.)

# %% [markdown]
# ## The losses inside null-text optimisation
#
# Every inner step records its terms: the latent MSE, the Sobel MSE and the PiDiNet MSE (both inside the mask).

# %%
from zsharm.teaching.plots import plot_losses

fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
plot_losses(with_edges.losses, ["null_text_mse"], ax=axes[0], title="latent term (x10 in the loss)", log=True)
plot_losses(with_edges.losses, ["sobel_mse", "pidinet_edge_mse"], ax=axes[1], title="edge terms (inside the mask)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the reconstructions look like
#
# Decoding the last latent of each trajectory: the VAE's own round trip (encode, decode), the drifted
# guidance-2.5 reconstruction, and the one with optimised null text.

# %%
with torch.no_grad():
    vae_round_trip = to_uint8(decode_latents(run, "notebook", inversion.latents[0]))[0]
    drifted = to_uint8(decode_latents(run, "notebook", denoise(run, inversion, cond, empty, config.guidance)[-1]))[0]
show_images([work, vae_round_trip, drifted, with_edges.reconstruction],
            ["input", "VAE round trip", f"guidance {config.guidance:g}, no null text", "null text + edges"],
            size=3.4)
plt.show()
unet_calls = run.counter.total("unet")
print(f"UNet calls made in this notebook so far: {unet_calls}")

# %% [markdown]
# ## Exercises
#
# 1. Plot the guidance-0 and guidance-2.5 curves for 10, 20 and 50 steps. How does the number of steps
#    change the inversion error?
# 2. `config.nulltext_max_inner` caps the inner steps ($\lfloor i/10\rfloor + 1$). Set it to 1 and compare
#    the error curve and the time.
# 3. zsharm's `fast` schedule stops inner steps early once the latent MSE is below `nulltext_early_stop`.
#    How many inner steps does it save here?
# 4. Invert with the *target* prompt instead of the source. Does the reconstruction care?
