# %% [markdown]
# # 02 · DDIM inversion and null-text optimisation
#
# **What this notebook teaches.** To edit a *real* photo with a diffusion model we first need the noise that
# would have generated it. DDIM inversion finds a trajectory of latents from the image up to noise (step 2.1
# of the method). Denoising back with classifier-free guidance drifts away from that trajectory; null-text
# optimisation (step 2.3) learns one "empty prompt" embedding per step that cancels the drift, and the
# method adds an edge loss to it. We measure the reconstruction error at every step, with and without it.

# %% cost {"unet_images": 1217, "unet_images_grad": 580, "vae_decodes": 247, "vae_decodes_grad": 145, "memory": "paper"}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # auto: SD 2 base where it can run (a GPU), else the toy prior
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: a tiny model, 4 steps at 128 px
FULL = False                                     # True: the paper's settings everywhere (zsharm.teaching.setup)
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator
from PIL import Image

from zsharm.edit.blending import mask_at
from zsharm.io.pictures import work_size
from zsharm.teaching.plots import show_images
from zsharm.teaching.setup import setup

course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
pipe, config = course.pipe, course.config()
image, mask, source, target = course.image, course.mask, course.source, course.target
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
# last step, to pure noise, is not taken ([docs/method.md](../docs/method.md), section 2.1; the paper's method section).

# %%
from zsharm.edit.diffusion import decode_latents, Run, text_embeddings, to_uint8
from zsharm.edit.diffusion import image_to_tensor
from zsharm.edit.inversion import ddim_invert
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
# ### The same, by hand
#
# `ddim_invert` adds bookkeeping (counted calls, the authors' arithmetic, v-prediction models), but the
# algorithm is these few lines, the formula above run upwards and then downwards. Check that they give the
# library's numbers (a test, `tests/test_widgets.py`, runs this very cell against `ddim_invert` too):

# %%
@torch.no_grad()
def ddim_by_hand(unet, scheduler, z, empty, steps):
    """DDIM inversion (eta 0, guidance 0) from the image's latent z_0 up to z_{N-1}."""
    scheduler.set_timesteps(steps)
    alphas, stride = scheduler.alphas_cumprod, scheduler.config.num_train_timesteps // steps
    path = [z]
    for t in scheduler.timesteps.flip(0)[:-1]:        # upwards; the last step, to pure noise, is not taken
        eps = unet(z.to(unet.dtype), t, encoder_hidden_states=empty.to(unet.dtype)).sample.float()
        a_t, a_next = alphas[t], alphas[t + stride]
        z0_hat = (z - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        z = a_next.sqrt() * z0_hat + (1 - a_next).sqrt() * eps
        path.append(z)
    return path


@torch.no_grad()
def sample_by_hand(unet, scheduler, z, cond, empty, guidance, timesteps):
    """DDIM sampling (eta 0) with classifier-free guidance from z over `timesteps` (high to low)."""
    alphas, stride = scheduler.alphas_cumprod, scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for t in timesteps:
        context = torch.cat([empty, cond]).to(unet.dtype)
        e_u, e_c = unet(torch.cat([z] * 2).to(unet.dtype), t, encoder_hidden_states=context).sample.float().chunk(2)
        eps = e_u + guidance * (e_c - e_u)
        a_t = alphas[t]
        a_prev = alphas[t - stride] if t >= stride else scheduler.final_alpha_cumprod
        z = a_prev.sqrt() * (z - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev).sqrt() * eps
    return z

# %%
with torch.no_grad():
    empty_embedding = text_embeddings(run, "notebook", [""])
    source_embedding = text_embeddings(run, "notebook", [source])
by_hand = ddim_by_hand(pipe.unet, pipe.scheduler, inversion.latents[0], empty_embedding, config.steps)
print("inversion by hand vs ddim_invert, largest difference:",
      max((a - b).abs().max().item() for a, b in zip(by_hand, inversion.latents)))
back = sample_by_hand(pipe.unet, pipe.scheduler, inversion.x_t, source_embedding, empty_embedding, 0.0,
                      inversion.timesteps[1:])
print(f"sampling back (guidance 0) lands {torch.mean((back - inversion.latents[0]) ** 2).item():.2e} (MSE) "
      "from the image's latent")

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
trajectories = {w: denoise(run, inversion, cond, empty, w) for w in (0.0, config.guidance)}
errors = {f"guidance {w:g}, empty null text": latent_errors(z, inversion) for w, z in trajectories.items()}

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
ax.xaxis.set_major_locator(MaxNLocator(integer=True))
ax.set_xlabel("denoising step (from noise towards the image)")
ax.set_ylabel("MSE to the inverted latent")
ax.set_title(course.caption("Reconstruction error per step"))
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
for ax in axes:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What the reconstructions look like
#
# Decoding the last latent of each trajectory: the VAE's own round trip (encode, decode), the drifted
# guidance-2.5 reconstruction, and the one with optimised null text.

# %%
drift = trajectories[config.guidance]
with torch.no_grad():
    vae_round_trip = to_uint8(decode_latents(run, "notebook", inversion.latents[0]))[0]
    drifted = to_uint8(decode_latents(run, "notebook", drift[-1]))[0]
show_images([work, vae_round_trip, drifted, with_edges.reconstruction],
            ["input", "VAE round trip", f"guidance {config.guidance:g}, no null text", "null text + edges"],
            size=3.4, suptitle=course.caption("Reconstructions"))
plt.show()

# %% [markdown]
# ## Explore the trajectory
#
# Every step's latent of both guided trajectories is decoded once here; the explorer then redraws as you
# move the step slider, with no model call: the inverted latent the step should land on, what each
# trajectory looks like after that step, where the step sits on the error curves, and (gold) the step's
# null-text inner iterations on the loss curves.

# %%
from zsharm.teaching.widgets import inversion_explorer, inversion_views

views = inversion_views(run, inversion, {f"guidance {config.guidance:g}, no null text": drift,
                                         "null text + edges": with_edges.latents}, with_edges, work)
inversion_explorer(views)

# %% [markdown]
# ## What real weights show
#
# With Stable Diffusion 2 base at 50 steps: the guidance-0 curve stays low (about 1e-3 and below: DDIM
# inversion is nearly exact at small steps), the guidance-2.5 curve climbs by one to two orders of magnitude
# towards the image end and its decoded picture drifts visibly (saturated colours, changed details: the
# reason null text exists), while the null-text curves hug the guidance-0 one and the reconstruction matches
# the VAE round trip. The edge loss keeps outlines inside the mask; its curves fall within each step.
# Null-text inversion's paper (Mokady et al. 2023) shows the same drift and its fix. The tiny
# model's random text encoder makes guidance do little, so its curves nearly coincide.

# %%
unet_calls = run.counter.total("unet")
print(f"UNet calls made in this notebook so far: {unet_calls}")

# %% [markdown]
# ## Exercises
#
# 1. Plot the guidance-0 and guidance-2.5 curves for 10, 20 and 50 steps. How does the number of steps
#    change the inversion error?
#    <details><summary>Hint</summary>Make <code>config = course.config(steps=n)</code> for each n and rerun
#    the inversion and the two <code>denoise</code> calls; the inversion's approximation (noise at z_t used for
#    the step to z_{t+1}) shrinks with the step size.</details>
# 2. `config.nulltext_max_inner` caps the inner steps ($\lfloor i/10\rfloor + 1$). Set it to 1 and compare
#    the error curve and the time.
#    <details><summary>Hint</summary><code>course.config(nulltext_max_inner=1)</code>, then a new
#    <code>Run</code> and <code>optimize_null_text</code>; compare <code>len(result.losses)</code> too.</details>
# 3. zsharm's `fast` schedule stops inner steps early once the latent MSE is below `nulltext_early_stop`.
#    How many inner steps does it save here?
#    <details><summary>Hint</summary>Count the records per step in <code>losses</code> (their
#    <code>step</code> field) under <code>course.config(nulltext_early_stop=1e-6, nulltext_max_inner=5)</code>.</details>
# 4. Invert with the *target* prompt instead of the source. Does the reconstruction care?
#    <details><summary>Hint</summary>Inversion runs at guidance 0: only the unconditional prediction is used,
#    so the prompt changes nothing in the latents. Check with <code>ddim_by_hand</code>: it never sees the prompt.</details>
# 5. **Graded:** How many null-text inner steps (AdamW steps) does the paper schedule take at 50 steps, with no early stop? Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary>At timestep index i (0 .. 48) the paper takes min(i // 10 + 1, 5) inner steps.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("02", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# ANSWER = sum(min(i // 10 + 1, 5) for i in range(49))  # 145
# ```
#
# 10 timesteps with 1 step, 10 with 2, 10 with 3, 10 with 4 and 9 with 5: 145, one VAE decode with gradients each.
# </details>
