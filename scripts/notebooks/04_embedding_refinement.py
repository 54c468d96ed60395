# %% [markdown]
# # 04 · Text-embedding refinement: making the words look at the right pixels
#
# **What this notebook teaches.** The description words ("bright warm indoor", "dim blue twilight") describe
# *regions*: the source words the pasted object, the target words the background. Left alone, their
# cross-attention spreads over the whole image (notebook 03), so an edit would leak everywhere and the
# target words would describe the object instead of borrowing the background's look. Step 2.2 of the method
# optimises the words' embeddings, timestep by timestep, until their attention matches the mask. We follow
# the loss $\mathcal{L}_{Emb}$, look at the maps before and after, and at how the background words are
# weighted.

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "stabilityai/stable-diffusion-2-base")
QUICK = os.environ.get("ZSHARM_QUICK") == "1"
STEPS = 4 if QUICK else 50
SIZE = 256 if QUICK else 512
DEVICE = None

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch

from zsharm.config import HarmonizeConfig
from zsharm.io import load_image, load_mask
from zsharm.models import load_pipeline
from zsharm.teaching.setup import is_tiny, repo_root, TINY_NOTE
from zsharm.teaching.plots import overlay_map, show_images

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

# %% [markdown]
# ## The loss
#
# Let $A_w$ be the image/32 cross-attention map of word $w$ (mean over the down and up layers and the
# heads), and $M$ the mask at that resolution. For the source words $S$ and the target (background) words
# $T$, with learnable weights $\lambda_k$ (softmax-normalised after every step),
#
# $$ A_{fg} = \sum_{w \in S} A_w, \qquad A_{bg} = \sum_{k \in T} \lambda_k A_k, $$
#
# $$ \mathcal{L}_{Emb} = \Big\lVert M - \frac{A_{fg}}{\max A_{fg}} \Big\rVert^2
#   + \Big\lVert (1 - M) - \frac{A_{bg}}{\max A_{bg}} \Big\rVert^2
#   + 1000\,\mathrm{MSE}(Emb, Emb_0). $$
#
# The last term keeps the embeddings near where they started, so the words keep their meaning. The object
# word is not optimised. At each of the $N-1$ denoising timesteps: 2 AdamW steps at learning rate
# $5\times10^{-4}$, guidance 0; then the background words are fused into one embedding with their weights.
# The result is one refined (source, target) embedding pair per timestep (METHOD.md, stage 2 step 2).
#
# `run_iteration` runs one whole iteration and keeps every intermediate; `result.refinement` is this step's.

# %%
from zsharm.edit.iteration import run_iteration

result = run_iteration(pipe, image, mask, source, target, config)
refinement = result.refinement
print(f"{len(refinement.losses)} AdamW steps over {len(refinement.embeddings)} timesteps; "
      f"first: {refinement.losses[0]}")

# %% [markdown]
# ## The loss curves
#
# Left: the two attention terms and their sum $\mathcal{L}_{Emb}$; right: the regulariser (it starts at 0
# and grows as the embeddings move). The grey lines mark where a new timestep begins: the maps change with
# the latent, so the loss jumps there.

# %%
from zsharm.teaching.plots import plot_losses

fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
plot_losses(refinement.losses, ["attn_fg", "attn_bg", "loss_emb"], ax=axes[0], title="attention terms")
plot_losses(refinement.losses, ["loss_reg"], ax=axes[1], title="regulariser 1000 MSE(Emb, Emb_0)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Maps before and after
#
# $A_{fg}$ and $A_{bg}$ at the very first AdamW step and at the last, each scaled to its maximum, beside the
# targets $M$ and $1 - M$ at the same resolution. Refinement pulls the source words onto the object and the
# target words onto the background.

# %%
from zsharm.edit.blending import latent_mask
from zsharm.edit.refinement import attention_mask_small

(fg_first, bg_first), (fg_last, bg_last) = refinement.maps_first, refinement.maps_last
w, h = result.work_input.size
small = attention_mask_small(latent_mask(result.mask_work, (w // 8, h // 8), config.mask_threshold),
                             tuple(fg_first.shape), config.mask_threshold)
fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
for row, (name, first, last, goal) in enumerate([("source words A_fg", fg_first, fg_last, small),
                                                   ("target words A_bg", bg_first, bg_last, 1 - small)]):
    overlay_map(axes[row, 0], result.work_input, goal, title=f"goal for the {name.split()[0]} words",
                cmap="gray", alpha=0.7)
    overlay_map(axes[row, 1], result.work_input, first, title=f"{name}, first step", mask=result.mask_work)
    overlay_map(axes[row, 2], result.work_input, last, title=f"{name}, last step", mask=result.mask_work)
plt.tight_layout()
plt.show()
for name, first, last, goal in [("A_fg", fg_first, fg_last, small), ("A_bg", bg_first, bg_last, 1 - small)]:
    before = torch.mean((goal - first / first.max()) ** 2).item()
    after = torch.mean((goal - last / last.max()) ** 2).item()
    print(f"{name}: distance to its goal {before:.4f} -> {after:.4f}")

# %% [markdown]
# (The first and last maps are taken at different timesteps, so part of their difference is the timestep's;
# the loss curve above shows the within-timestep effect.)
#
# ## The background word weights
#
# Several background words compete to describe the scene. Each token gets a weight $\lambda_k$; after every
# AdamW step the weights are renormalised with a softmax. Their trajectory over the timesteps shows which
# word the optimisation found best at covering the background.

# %%
from zsharm.edit.tokens import condition_vocabulary, description_positions, split_object
from zsharm.teaching.trace import token_labels

n_object = split_object(source, target, condition_vocabulary())
positions = description_positions(pipe.tokenizer, target, n_object)
labels = [token_labels(pipe.tokenizer, target)[p] for p in positions]
weights = np.stack([w.numpy() for w in refinement.background_weights])
fig, ax = plt.subplots(figsize=(8, 3.6))
for k, label in enumerate(labels):
    ax.plot(np.arange(len(weights)), weights[:, k], marker="o", label=f'"{label}"')
ax.set_xlabel("denoising timestep index")
ax.set_ylabel("weight (softmax-normalised)")
ax.set_title(f'Weights of the background words of "{target}"')
ax.grid(alpha=0.3)
ax.legend()
plt.show()

# %% [markdown]
# ## What refinement changes in the result
#
# The same iteration without refinement (`refine=False`: the plain prompt embeddings at every step).

# %%
plain = run_iteration(pipe, image, mask, source, target, config.replace(refine=False), progress=False)
show_images([result.work_input, plain.work_image, result.work_image],
            ["input", "without refinement", "with refinement"], size=3.8)
plt.show()
print(f"refinement took {result.seconds['refinement']:.1f} s of the iteration's "
      f"{sum(result.seconds.values()):.1f} s")

# %% [markdown]
# ## Exercises
#
# 1. Set `refine_reg_weight=0`. The attention loss falls further; what happens to the picture, and why?
# 2. Double `refine_iters` or `refine_lr`. How much lower does $\mathcal{L}_{Emb}$ go, and is the result
#    better?
# 3. Add an environment word to the target ("dim blue twilight city"). Does its weight rise or fall?
# 4. zsharm's `fast` schedule sets `refine_cond_only=True`: it computes only the conditional rows' maps,
#    since guidance 0 ignores the rest. Check that the losses match the paper schedule's on the first step.
