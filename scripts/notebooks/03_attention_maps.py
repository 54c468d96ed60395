# %% [markdown]
# # 03 · Attention maps: which pixels each word looks at
#
# **What this notebook teaches.** Inside Stable Diffusion's UNet, every image location attends to the words
# of the prompt (*cross-attention*) and to the other image locations (*self-attention*). These maps are the
# handles of the whole method: refinement (notebook 04) reshapes the cross-attention maps, Prompt-to-Prompt
# (notebook 06) copies both kinds from one branch to the other. Here we record every map of a denoising run
# and look at them per word, per layer and per timestep, with an interactive viewer at the end.

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "stabilityai/stable-diffusion-2-base")
QUICK = os.environ.get("ZSHARM_QUICK") == "1"
STEPS = 4 if QUICK else 50
SIZE = 256 if QUICK else 512   # at 256 px the smallest maps are 8x6: enough to see something
DEVICE = None

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from zsharm.edit.blending import mask_at
from zsharm.config import HarmonizeConfig
from zsharm.io import load_image, load_mask
from zsharm.models import load_pipeline
from zsharm.teaching.setup import is_tiny, repo_root, TINY_NOTE
from zsharm.teaching.plots import overlay_map

ROOT = repo_root()
DATA = ROOT / "data"
plt.rcParams["figure.dpi"] = 90
if is_tiny(MODEL):
    print(TINY_NOTE)

pipe = load_pipeline(MODEL, device=DEVICE)
config = HarmonizeConfig.paper(steps=STEPS, size=SIZE)
image = load_image(DATA / "demo" / "composite.png").to_pil_rgb8()
mask = load_mask(DATA / "demo" / "mask.png", size=image.size)
source = "astronaut bright warm indoor"

# %% [markdown]
# ## Attention in one formula
#
# At each attention layer the image features give queries $Q$ (one row per latent pixel), and the keys $K$
# and values $V$ come from the text (cross-attention: 77 token embeddings) or from the image itself
# (self-attention). The map
#
# $$ A = \mathrm{softmax}\!\left(\frac{Q K^\top}{\sqrt{d}}\right) $$
#
# has one row per pixel and one column per key; each row sums to 1. Column $j$ of a cross-attention map,
# reshaped to the image grid, shows **where token $j$ acts**. The UNet has attention layers at several
# resolutions; the method's loss $\mathcal{L}_{Emb}$ uses the image/32 maps (16x16 for a 512 px image) of the
# down and up blocks, averaged over layers and heads (METHOD.md, stage 2 step 2).
#
# ## Recording every map
#
# `trace_attention` inverts the image under the prompt, denoises it back with guidance, and records with an
# `AttentionRecorder`: a controller (the Prompt-to-Prompt idea, here on diffusers attention processors) that
# keeps each map of the chosen resolutions under *(step, layer, cross or self)*, averaged over heads.

# %%
from zsharm.teaching.trace import trace_attention

trace = trace_attention(pipe, image, source, config, cross_res=(32, 16), self_res=(32,))
recorder = trace.recorder
mask_work = mask_at(mask, trace.image.size, config.mask_threshold)
print("tokens:", trace.tokens)
print("words -> token positions:", trace.spans)
print(f"{len(recorder.steps)} steps (timesteps {trace.timesteps})")
for kind in (True, False):
    layers = recorder.layers(kind)
    print(f"{'cross' if kind else 'self'}-attention layers:",
          ", ".join(f"{name} {recorder.shape_of(name, kind)}" for name in layers))

# %% [markdown]
# ## Per word, averaged as $\mathcal{L}_{Emb}$ averages them
#
# The mean over steps and layers of the image/32 maps, one panel per word (a word split into several tokens
# sums its tokens). Each panel is stretched from its own minimum (blue) to its maximum (red), so the panels
# show *where* each word acts, not how much. The start token takes most of the attention in absolute terms:
# it carries little meaning and serves as a sink.

# %%
from zsharm.teaching.plots import plot_word_maps

plot_word_maps(trace.image, recorder.mean(), trace.spans, mask=mask_work, include_start=True,
               title=f'"{source}": mean image/32 cross-attention per word')
plt.show()

# %% [markdown]
# With a trained model, the object word concentrates on the object. The condition words ("warm",
# "indoor") describe the whole scene, and the paper's motivation for refinement is that nothing ties their
# attention to the foreground or the background: notebook 04 does.
#
# ## Across timesteps
#
# Early steps (high noise) decide the layout; late steps refine details. The same word's map at each step:

# %%
word = trace.spans[-1][0]
steps = recorder.steps
chosen = sorted(set(np.linspace(0, len(steps) - 1, min(6, len(steps))).astype(int)))
fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.0), squeeze=False)
for ax, k in zip(axes[0], chosen):
    heat = recorder.mean(steps=[steps[k]])
    positions = dict(trace.spans)[word]
    overlay_map(ax, trace.image, heat[..., positions].sum(-1), title=f"step {steps[k]} (t={trace.timesteps[k]})",
                mask=mask_work)
fig.suptitle(f'"{word}" over the denoising steps (image/32 maps)')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Across layers
#
# Each layer has its own map. Down-block layers see the noisy input, up-block layers see the decoder's
# features; the image/16 layers (finer grid) show sharper but noisier maps.

# %%
middle = steps[len(steps) // 2]
layers = recorder.layers(True)
positions = dict(trace.spans)[word]
fig, axes = plt.subplots(1, len(layers), figsize=(2.8 * len(layers), 2.8), squeeze=False)
for ax, layer in zip(axes[0], layers):
    heat = recorder.map(middle, layer)[..., positions].sum(-1)
    overlay_map(ax, trace.image, heat, title=f"{layer} {tuple(heat.shape)}", mask=mask_work)
fig.suptitle(f'"{word}" in each cross-attention layer at step {middle}')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Self-attention: which pixels a pixel looks at
#
# A row of a self-attention map, reshaped to the grid, shows which image locations one location draws its
# features from. Copying these maps from one branch to the other (notebook 06) copies the image's
# structure. Below: one query pixel inside the foreground and one in the background (white cross).

# %%
selfmap = recorder.mean(is_cross=False)
h, w = selfmap.shape[:2]
small_mask = mask_at(mask, (w, h), config.mask_threshold)
ys, xs = np.nonzero(small_mask)
queries = {"foreground pixel": (int(np.median(ys)), int(np.median(xs))),
           "background pixel": next((y, x) for y, x in [(h // 4, 3 * w // 4), (0, w - 1)] if not small_mask[y, x])}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, (name, (qy, qx)) in zip(axes, queries.items()):
    overlay_map(ax, trace.image, selfmap[qy, qx].reshape(h, w), title=f"{name} ({qy}, {qx})", mask=mask_work)
    W, H = trace.image.size
    ax.plot([(qx + 0.5) * W / w], [(qy + 0.5) * H / h], "w+", markersize=16, markeredgewidth=3)
fig.suptitle("Self-attention of one query pixel (mean over steps and image/32 layers)")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Interactive viewer
#
# Pick a word, a layer (or the mean over the image/32 layers) and a step; the picture updates as you move
# the controls. The viewer needs a live kernel and `ipywidgets`: on a static page (GitHub, or a notebook
# run headless) it does not render, and the figures above show the same maps.

# %%
import ipywidgets as widgets

words = [w for w, _ in trace.spans] + ["<start>"]


def show_cross(word, layer, step):
    positions = [0] if word == "<start>" else dict(trace.spans)[word]
    if layer == "mean of image/32 layers":
        heat = recorder.mean(steps=[step])
    else:
        heat = recorder.map(step, layer)
    fig, ax = plt.subplots(figsize=(5, 4))
    overlay_map(ax, trace.image, heat[..., positions].sum(-1), mask=mask_work,
                title=f'"{word}", {layer}, step {step} (t={trace.timesteps[steps.index(step)]})')
    plt.show()


widgets.interact(show_cross, word=widgets.Dropdown(options=words, value=words[-2]),
                 layer=widgets.Dropdown(options=["mean of image/32 layers"] + recorder.layers(True)),
                 step=widgets.SelectionSlider(options=steps, value=steps[0]));

# %%
def show_self(layer, step, row, column):
    heat = recorder.map(step, layer, is_cross=False)
    hh, ww = heat.shape[:2]
    row, column = min(row, hh - 1), min(column, ww - 1)
    fig, ax = plt.subplots(figsize=(5, 4))
    overlay_map(ax, trace.image, heat[row, column].reshape(hh, ww), mask=mask_work,
                title=f"self-attention of pixel ({row}, {column}), {layer}, step {step}")
    W, H = trace.image.size
    ax.plot([(column + 0.5) * W / ww], [(row + 0.5) * H / hh], "w+", markersize=16, markeredgewidth=3)
    plt.show()


widgets.interact(show_self, layer=widgets.Dropdown(options=recorder.layers(False)),
                 step=widgets.SelectionSlider(options=steps, value=steps[0]),
                 row=widgets.IntSlider(value=queries["foreground pixel"][0], min=0, max=h - 1),
                 column=widgets.IntSlider(value=queries["foreground pixel"][1], min=0, max=w - 1));

# %% [markdown]
# ## Exercises
#
# 1. Trace the target prompt `"astronaut dim blue twilight"`. Which of its words attend to the background,
#    and which to the astronaut?
# 2. Record the image/8 maps too (`cross_res=(32, 16, 8)`). How much memory do they take at 512 px and
#    50 steps? (Each map is pixels x 77 floats.) Why does the method use image/32?
# 3. The recorder keeps the conditional half of the batch only. Record the unconditional half
#    (`AttentionRecorder(..., cond_only=False)`) and compare the maps of the empty prompt.
# 4. Find the step after which the maps of "astronaut" stop changing. What does that say about when the
#    layout is decided?
