# %% [markdown]
# # 06 · Prompt-to-Prompt editing: what attention replacement keeps
#
# **What this notebook teaches.** Step 2.4 of the method edits the foreground by denoising *two* branches
# side by side from the inverted latent: the source branch with the source description (it reconstructs the
# input) and the target branch with the target description (it becomes the edit). If the target branch ran
# freely, the new words would redraw the object. Prompt-to-Prompt (Hertz et al. 2022) makes the target
# branch reuse the source branch's attention maps, so only the description's *meaning* changes the result.
# We switch the two kinds of replacement on and off and see what each keeps.

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

from zsharm.config import HarmonizeConfig
from zsharm.io import load_image, load_mask
from zsharm.models import load_pipeline
from zsharm.edit.pidinet import load_pidinet
from zsharm.teaching.setup import is_tiny, repo_root, TINY_NOTE
from zsharm.teaching.plots import show_images

ROOT = repo_root()
DATA = ROOT / "data"
plt.rcParams["figure.dpi"] = 90
if is_tiny(MODEL):
    print(TINY_NOTE)

pipe = load_pipeline(MODEL, device=DEVICE)
pidinet = load_pidinet(variant="tiny", device=pipe.device)  # beside the UNet
config = HarmonizeConfig.paper(steps=STEPS, size=SIZE)
image = load_image(DATA / "demo" / "composite.png").to_pil_rgb8()
mask = load_mask(DATA / "demo" / "mask.png", size=image.size)
source, target = "astronaut bright warm indoor", "astronaut dim blue twilight"

# %% [markdown]
# ## Two branches, one batch
#
# At every step the UNet runs on a batch of four rows: the unconditional and conditional rows of the source
# branch and of the target branch. Each branch gets its own refined text embedding and the optimised null
# embedding of that step (notebooks 02 and 04); guidance 2.5 combines each branch's two rows.
#
# The controller `AttentionReplace` then edits the maps of the **conditional target row** only:
#
# * **cross-attention replacement** (all words, for the first `cross_replace_steps` of the steps): the target
#   row uses the source row's maps $A^{src}$ with its *own* values $V^{tgt}$, i.e.
#   $\mathrm{out}^{tgt} = A^{src} V^{tgt}$. Each region keeps attending to the same word positions, but the
#   words now mean the target description: the *layout* of meaning is kept, the meaning changes;
# * **self-attention replacement** (every resolution, for the first `self_replace_steps`): every pixel draws
#   its features from the same pixels as in the source branch, which keeps the image's *structure*. Unlike
#   the original Prompt-to-Prompt code, the authors replace self-attention at every resolution, not only at
#   16x16 (METHOD.md, stage 2 step 4).
#
# The unconditional rows of both branches run unchanged. After the edit, the blend keeps the background:
# $I_{out} = M \odot I_{edit} + (1 - M) \odot I_{in}$.

# %% [markdown]
# ## Four variants
#
# Both replacements (the method), cross only, self only, and none (the target branch runs freely). Each is a
# full iteration; `result.edit.images` holds both branches' decoded images.

# %%
from zsharm.teaching.figures import run_variants

variants = {
    "cross + self (the method)": config,
    "cross only": config.replace(self_replace_steps=0.0),
    "self only": config.replace(cross_replace_steps=0.0),
    "no replacement": config.replace(cross_replace_steps=0.0, self_replace_steps=0.0),
}
results = run_variants(pipe, image, mask, source, target, variants, pidinet=pidinet)

first = next(iter(results.values()))
show_images([first.work_input, first.edit.images[0]] + [r.edit.images[1] for r in results.values()],
            ["input", "source branch (reconstruction)"] + [f"target branch:\n{name}" for name in results],
            ncols=3, size=3.6)
plt.show()

# %% [markdown]
# The source branch is the same in every variant: it only reconstructs the input (through the null-text
# embeddings). The target branches differ. Prompt-to-Prompt's finding, which the method relies on: without
# replacement a new prompt redraws the picture; self-attention replacement holds the structure;
# cross-attention replacement holds which region each word governs.
#
# ## After the blend: structure kept, colour moved
#
# What matters is the blended output. For each variant: how far the edges inside the mask moved from the
# input (Sobel MSE) and how far the colour moved (mean $\Delta E$).

# %%
from zsharm.teaching.figures import variants_figure

variants_figure(image, mask, results, title="Prompt-to-Prompt: which attention is replaced", pidinet=pidinet)
plt.show()

# %% [markdown]
# ## The maps of the two branches
#
# With `keep_maps=True` the edit also returns an `AttentionStore` with the image/32 cross-attention maps of
# both conditional rows, averaged over steps. The store sees each map *before* the replacement, i.e. what
# the target row would have attended to on its own, computed from its features (which themselves come from
# the replaced maps of earlier layers).

# %%
from zsharm.edit.iteration import run_iteration
from zsharm.edit.tokens import word_token_spans
from zsharm.teaching.plots import plot_word_maps

kept = run_iteration(pipe, image, mask, source, target, config, progress=False, keep_maps=True, pidinet=pidinet)
h, w = kept.edit.latents[-1].shape[-2] * 8 // 32, kept.edit.latents[-1].shape[-1] * 8 // 32
for row, prompt in enumerate([source, target]):
    plot_word_maps(kept.work_input, kept.edit.maps.aggregate((h, w), row=row), word_token_spans(pipe.tokenizer, prompt),
                   mask=kept.mask_work, title=f'{"source" if row == 0 else "target"} branch: "{prompt}"')
    plt.show()

# %% [markdown]
# ## Exercises
#
# 1. Replace cross-attention for only the first half of the steps (`cross_replace_steps=0.5`). What changes
#    in the target branch, and in the blend?
# 2. The original Prompt-to-Prompt replaced self-attention only in the 16x16 layers. Which parts of the
#    picture would you expect to change more if fine layers were left free?
# 3. Swap the roles: edit from the target description back to the source one. Do you get the input back?
# 4. Why does replacement touch only the conditional rows? Hint: what would guidance compute if the
#    unconditional rows of the target branch also copied the source's maps?
