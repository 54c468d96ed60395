# %% [markdown]
# # 03 · Attention maps: which pixels each word looks at
#
# **What this notebook teaches.** Inside Stable Diffusion's UNet, every image location attends to the words
# of the prompt (*cross-attention*) and to the other image locations (*self-attention*). These maps are the
# handles of the whole method: refinement (notebook 04) reshapes the cross-attention maps, Prompt-to-Prompt
# (notebook 06) copies both kinds from one branch to the other. Here we record every map of a denoising run
# and look at them per word, per layer and per timestep, with explorers at the end that need no model call.

# %% cost {"unet_images": 200, "vae_decodes": 1, "memory": "inference", "downloads": ["sd2"]}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # auto: SD 2 base where it can run (a GPU), else the toy prior
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: a tiny model, 4 steps
FULL = False                                     # True: the paper's settings everywhere (zsharm.teaching.setup)
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from zsharm.edit.blending import mask_at
from zsharm.teaching.plots import NORMALISATION, overlay_map
from zsharm.teaching.setup import setup

# at 256 px the smallest maps are 8x8: enough to see something on the quick run
course = setup(MODEL, DEVICE, quick=QUICK, full=FULL, size=256 if QUICK else None)
pipe, config = course.pipe, course.config()
image, mask, source = course.image, course.mask, course.source

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
# down and up blocks, averaged over layers and heads ([docs/method.md](../docs/method.md), section 2.2; the paper's method section).
#
# ## Recording every map
#
# `trace_attention` inverts the image under the prompt, denoises it back with guidance, and records with an
# `AttentionRecorder`: a controller (the Prompt-to-Prompt idea, here on diffusers attention processors) that
# keeps each map of the chosen resolutions under *(step, layer, cross or self)*, averaged over heads.

# %%
from zsharm.teaching.trace import trace_attention

trace = trace_attention(pipe, image, source, config, cross_res=course.attention_divisors, self_res=(course.attention_divisor,))
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
# ## The recorder, written out
#
# A diffusers attention processor is a function the UNet calls at each attention layer with the layer's
# projections (`attn.to_q`, `attn.to_k`, `attn.to_v`, `attn.to_out`) and its inputs. Here is one that
# computes $A = \mathrm{softmax}(QK^\top/\sqrt d)$, keeps the conditional rows' map (mean over heads), and
# returns $AV$ as the layer would. We install it on every layer, run one UNet call, and check that it
# records exactly what the library's `AttentionRecorder` records and that the UNet's output is unchanged.

# %%
import torch

from zsharm.edit.diffusion import Run, text_embeddings
from zsharm.teaching.trace import AttentionRecorder, layer_name, recording_attention


class RecordingProcessor:
    def __init__(self, name, maps):
        self.name, self.maps = name, maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b, n, _ = hidden_states.shape
        q, k, v = (f(x).view(b, x.shape[1], attn.heads, -1).transpose(1, 2)
                   for f, x in ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)          # A = softmax(Q K^T / sqrt(d))
        if encoder_hidden_states is not None:                              # cross-attention: keep its map
            self.maps[self.name] = probs[b // 2:].mean(1)                  # conditional rows, mean over heads
        out = (probs @ v).transpose(1, 2).reshape(b, n, -1)                # A V, heads side by side
        return attn.to_out[1](attn.to_out[0](out))                         # output projection, dropout


run = Run(pipe=pipe, config=config, progress=False)
W, H = trace.image.size
with torch.no_grad():
    latents = torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(0)).to(pipe.device, pipe.unet.dtype)
    context = text_embeddings(run, "notebook", ["", source])             # [unconditional, conditional]
    t = trace.timesteps[0]
    hand_maps, saved = {}, pipe.unet.attn_processors
    pipe.unet.set_attn_processor({name: RecordingProcessor(name, hand_maps) for name in saved})
    try:
        hand_out = pipe.unet(latents, t, encoder_hidden_states=context).sample
    finally:
        pipe.unet.set_attn_processor(saved)
    library = AttentionRecorder((H, W), cross_res=course.attention_divisors, self_res=(), cond_only=True)
    with recording_attention(pipe.unet, library):
        library_out = pipe.unet(latents, t, encoder_hidden_states=context).sample

checked = 0
for name, hand in hand_maps.items():
    if (0, layer_name(name), True) in library.maps:
        kept = library.map(0, layer_name(name))
        assert torch.allclose(hand[0].float().cpu().reshape(kept.shape), kept, atol=1e-6), name
        checked += 1
assert checked == len(library.layers(True)) > 0
assert torch.allclose(hand_out.float(), library_out.float(), atol=1e-5)
print(f"the hand-written processor records the library's maps in all {checked} recorded layers, "
      "and the UNet's output is the same")

# %% [markdown]
# ## Per word, averaged as $\mathcal{L}_{Emb}$ averages them
#
# The mean over steps and layers of the image/32 maps, one panel per word (a word split into several tokens
# sums its tokens). Every map in this notebook is divided by its own maximum (the colour bar says so): zero
# stays dark, so a map that is nearly the same everywhere looks nearly the same everywhere, and each panel's
# title gives its maximum, so words compare in absolute terms too. Below the figure: each word's share of the
# attention (the mean of its map; the 77 shares of a pixel sum to 1), for whichever model is loaded.

# %%
from zsharm.teaching.plots import plot_word_maps

plot_word_maps(trace.image, recorder.mean(), trace.spans, mask=mask_work, include_start=True,
               title=course.caption(f'"{source}": mean image/32 cross-attention per word'))
plt.show()
mean_map = recorder.mean()
for word, positions in [("<start>", [0])] + trace.spans:
    print(f"{word:>10}: {float(mean_map[..., positions].sum(-1).mean()):.1%} of the attention")

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
    shown = overlay_map(ax, trace.image, heat[..., positions].sum(-1), title=f"step {steps[k]} (t={trace.timesteps[k]})",
                        mask=mask_work)
fig.suptitle(course.caption(f'"{word}" over the denoising steps (image/32 maps)'))
plt.tight_layout()
fig.colorbar(shown, ax=list(axes.flat), fraction=0.02, pad=0.01, label=NORMALISATION)
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
    shown = overlay_map(ax, trace.image, heat, title=f"{layer} {tuple(heat.shape)}", mask=mask_work)
fig.suptitle(course.caption(f'"{word}" in each cross-attention layer at step {middle}'))
plt.tight_layout()
fig.colorbar(shown, ax=list(axes.flat), fraction=0.02, pad=0.01, label=NORMALISATION)
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
    shown = overlay_map(ax, trace.image, selfmap[qy, qx].reshape(h, w), title=f"{name} ({qy}, {qx})", mask=mask_work)
    W, H = trace.image.size
    ax.plot([(qx + 0.5) * W / w], [(qy + 0.5) * H / h], "w+", markersize=16, markeredgewidth=3)
fig.suptitle(course.caption("Self-attention of one query pixel (mean over steps and image/32 layers)"))
plt.tight_layout()
fig.colorbar(shown, ax=list(axes.flat), fraction=0.03, pad=0.01, label=NORMALISATION)
plt.show()

# %% [markdown]
# ## Explore: word, layer, step
#
# Everything was recorded once above; the explorer below only redraws (no model call) as you move its
# controls, with the keyboard or the mouse. Each map is divided by its own maximum (the colour bar is that
# ratio), and its maximum is in the title: compare it between words to see how much attention the start token
# takes. On a static page (GitHub, a headless run) you see the explorer's first state as a picture.

# %%
from zsharm.teaching.widgets import cross_attention_explorer, self_attention_explorer

cross_attention_explorer(trace, mask_work)

# %% [markdown]
# Self-attention, one query pixel at a time (row and column on the image/32 grid):

# %%
self_attention_explorer(trace, mask_work, start=queries["foreground pixel"])

# %% [markdown]
# ## What real weights show
#
# With Stable Diffusion 2 base (`MODEL = "stabilityai/stable-diffusion-2-base"`, 50 steps at 512 px), look
# for: "astronaut" concentrating on the figure from the first steps on (the layout is decided early); the
# condition words ("bright", "warm", "indoor") spread over the whole picture, foreground and background
# alike, which is exactly the problem refinement (notebook 04) fixes; the start token's printed share well above
# every word's (an attention sink: it carries little meaning); image/16 maps sharper
# than image/32 ones but noisier; and the self-attention of a foreground pixel staying on the object, that of
# a background pixel on the background. On the tiny model none of this holds: its weights are random.

# %% [markdown]
# ## Exercises
#
# 1. Trace the target prompt `"astronaut dim blue twilight"`. Which of its words attend to the background,
#    and which to the astronaut?
#    <details><summary>Hint</summary>Call <code>trace_attention(pipe, image, course.target, config)</code> and
#    pass the new trace to <code>cross_attention_explorer</code>; compare each word's map with the mask outline.
#    On the tiny model the answer is noise: run it on SD 2 base.</details>
# 2. Record the image/8 maps too (`cross_res=(32, 16, 8)`). How much memory do they take at 512 px and
#    50 steps? (Each map is pixels x 77 floats.) Why does the method use image/32?
#    <details><summary>Hint</summary>image/8 at 512 px is 64x64 = 4,096 pixels; x 77 tokens x 4 bytes x
#    layers x 49 steps. The loss needs a map per step with gradients: the coarsest maps are the cheapest and
#    already locate objects.</details>
# 3. The recorder keeps the conditional half of the batch only. Record the unconditional half
#    (`AttentionRecorder(..., cond_only=False)`) and compare the maps of the empty prompt.
#    <details><summary>Hint</summary>The empty prompt is the start token, end tokens and padding: almost all
#    its attention sits on the start token.</details>
# 4. Find the step after which the maps of "astronaut" stop changing. What does that say about when the
#    layout is decided?
#    <details><summary>Hint</summary>Move the step slider of the first explorer with the word fixed; or compute
#    the correlation between consecutive steps' maps with <code>recorder.mean(steps=[s])</code>.</details>
# 5. **Graded:** How many bytes does one head-averaged image/8 cross-attention map of one layer at one step take at 512 px in float32? Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary>image/8 of 512 px is a 64x64 grid; one float per pixel and token.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("03", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# ANSWER = (512 // 8) ** 2 * 77 * 4  # 1,261,568 bytes
# ```
#
# About 1.2 MB per layer and step; times layers and 49 steps it is gigabytes, and the loss needs them with gradients: image/32 maps are 16 times smaller.
# </details>
