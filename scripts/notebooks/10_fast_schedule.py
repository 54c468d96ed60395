# %% [markdown]
# # 10 · The fast schedule: where the time goes and what each shortcut costs
#
# **What this notebook teaches.** One iteration of the authors' pipeline evaluates the UNet on about 1,270
# images (682 of them with gradients) and decodes 145 images through the VAE with gradients, in fp32 with
# every attention map materialised. zsharm's `fast` schedule does the same method with a fifth of that work.
# We count where the work goes, check the one identity that lets attention replacement run fused, see why
# half-precision gradients need loss scaling, and then switch each shortcut on and off to see what it saves
# and how far it moves the picture from the paper's.

# %% cost {"iterations": 12, "memory": "paper", "note": "The ablation rows: about nine paper-cost and nine fast-cost iterations (a fast one is about a fifth of a paper one), counted here as twelve paper iterations. ROWS picks fewer."}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # auto: SD 2 base where it can run (a GPU), else the toy prior
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: a tiny model, 4 steps at 128 px
FULL = False                                     # True: the paper's settings everywhere (nothing changes here)
STEPS = 4 if QUICK else None    # None: each schedule's own (paper 50, fast 20)
ROWS = None                     # None: every ablation row (about nine paper-cost and nine fast-cost iterations)
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import torch

from zsharm.config import HarmonizeConfig
from zsharm.models import default_device
from zsharm.repro.speed import paper_counts, schedule_counts
from zsharm.teaching.setup import setup

course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
SIZE = course.size
ROOT, DATA = course.root, course.data
device = torch.device(DEVICE) if DEVICE else default_device()

# %% [markdown]
# ## Where the work goes
#
# Counting needs no model: each stage's number of UNet calls follows from the schedule ([docs/method.md](../docs/method.md)
# gives the paper's; `zsharm.repro.speed.schedule_counts` derives any configuration's, and the tests check both against real
# runs). With $n$ = steps - 1 denoising steps, the paper's iteration makes
#
# * inversion: $n$ calls on 2 images (the conditional half is computed though guidance is 0),
# * refinement: $2n$ calls on 4 images *with* gradients (two AdamW steps per timestep) plus $n$ without,
# * null-text: $\sum_i \min(i/\!/10 + 1, 5)$ calls on 2 images with gradients, each followed by a VAE decode
#   with gradients for the edge loss, plus $n$ calls without,
# * editing: $n$ calls on 4 images (two branches, each conditional and unconditional).

# %%
from zsharm.repro.switches import plot_stage_work
from zsharm.repro.speed import summarise

tables = {"paper (50 steps)": paper_counts(50), "fast (20 steps)": schedule_counts(HarmonizeConfig.fast())}
for name, counts in tables.items():
    s = summarise(counts)
    print(f"{name:18s} {s['unet_calls']:4d} UNet calls, {s['unet_images']:5d} image evaluations "
          f"({s['unet_images_grad']} with gradients), {s['vae_decodes_grad']} VAE decodes with gradients")
plot_stage_work(tables)
plt.show()

# %% [markdown]
# A VAE decode of a 512x512 image costs about three UNet image evaluations (2.5 vs 0.8 TFLOP), and one with
# gradients about nine: the edge loss, not the UNet, makes null-text the paper's most expensive stage. That
# is why `fast` decodes only the mask's bounding box (`edge_crop`).

# %% [markdown]
# ## Fused attention can still replace maps
#
# Prompt-to-Prompt gives the target branch the source branch's attention map $A^{src} =
# \mathrm{softmax}(Q^{src} {K^{src}}^\top / \sqrt d)$ times the target's own values:
# $\mathrm{out}^{tgt} = A^{src} V^{tgt}$. Fused attention (`scaled_dot_product_attention`) never builds $A$,
# but it computes $\mathrm{softmax}(Q K^\top / \sqrt d) V$ row by row of the batch: give the target row the
# source row's queries and keys and keep its values, and it computes exactly $A^{src} V^{tgt}$. Only the maps
# that are *read* (refinement's image/32 maps, the notebooks' viewers) must be materialised.
#
# Below, one UNet call of the edit on a batch of four rows, with the maps materialised and with the fused
# swap: the outputs agree to float32 rounding.

# %%
from zsharm.edit.attention import AttentionReplace, controlled_attention
from zsharm.models import load_pipeline

pipe = load_pipeline(MODEL, device=device, dtype=torch.float32)
unet = pipe.unet
h = w = SIZE // 8
generator = torch.Generator().manual_seed(0)
latents = torch.randn(4, unet.config.in_channels, h, w, generator=generator).to(device)
context = torch.randn(4, 77, unet.config.cross_attention_dim, generator=generator).to(device)
outputs = {}
with torch.no_grad():
    for fused in (False, True):
        with controlled_attention(unet, AttentionReplace(cross_steps=1, self_steps=1), fused=fused):
            outputs[fused] = unet(latents, 500, encoder_hidden_states=context).sample
print("largest difference, fused vs materialised:", (outputs[True] - outputs[False]).abs().max().item())
print("largest difference, target row vs free target row:",
      (outputs[True][3] - unet(latents, 500, encoder_hidden_states=context).sample[3]).abs().max().item())

# %% [markdown]
# The second number shows the replacement does something: the same target row run without it comes out
# different.

# %% [markdown]
# ## Half precision needs loss scaling
#
# On a GPU both schedules run the UNet in fp16 (paper's `arithmetic="auto"` keeps the authors' fp32 on CPU
# only, where it reproduces their numbers; see `tests/test_reference.py`). The embeddings being optimised stay
# float32, but their gradients travel back through fp16 activations. fp16's smallest subnormal is about
# $6\times10^{-8}$ and its largest value 65504: gradients of an MSE loss of $10^{-3}$ easily fall below the
# first, and refinement's normalised attention maps can exceed the second. `zsharm.edit.diffusion.optimizer_step`
# multiplies the loss by a scale before the backward and divides the gradients after (PyTorch's
# `GradScaler`); where the scaled gradients overflow it halves the scale, computes the loss again and repeats
# the backward, rather than skipping the step as mixed-precision training does, so that every one of the paper's
# steps is taken (the repeated model calls are counted apart, as "recomputed").

# %%
from zsharm.edit.diffusion import optimizer_step

for scaled in (False, True):
    p = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([p], lr=0.1)
    # d loss / d p = 1e-8, computed in fp16; optimizer_step takes a function, to recompute the loss on overflow
    optimizer_step(torch.amp.GradScaler("cpu", enabled=scaled), optimizer, lambda again: (p.half() * 1e-8).float().sum())
    print(f"loss scaling {'on ' if scaled else 'off'}: gradient {p.grad.tolist()}")

# %% [markdown]
# ## Each shortcut on its own
#
# `zsharm.repro.switches` lists every way `fast` differs from `paper` as a switch. It runs the paper schedule, the
# paper schedule with each switch turned on alone, the fast schedule, and the fast schedule with each switch
# turned off alone, all on the demo composite, and compares every output with the paper's inside the mask.
# With real weights that is about nine iterations at the paper's cost and nine at fast's; set `ROWS` to a list
# of row names (e.g. `["fast", "fast - 20 DDIM steps"]`) to run fewer. The same table comes from the command
# line:
#
# ```bash
# zsharm ablate --model stabilityai/stable-diffusion-2-base --size 512 --out ablation.md
# ```

# %%
from zsharm.repro.switches import ablate, fast_switches, markdown, plot

for switch in fast_switches():
    print(f"- {switch.name}: {switch.why}")

del pipe, unet, outputs  # the ablation loads the model in each precision it needs
if device.type == "cuda":
    torch.cuda.empty_cache()
image, mask, source, target = course.image, course.mask, course.source, course.target
rows = ablate(MODEL, image, mask, source, target, size=SIZE, steps=STEPS, device=device, only=ROWS)

# %%
from IPython.display import Markdown, display

display(Markdown(markdown(rows)))
plot(rows)
plt.show()

# %% [markdown]
# How to read it: a switch is cheap in faithfulness when its row stays close to the paper's output (high
# fPSNR, a change of a few grey levels), and worth having when it removes many evaluations, especially ones
# with gradients. On a random-weight model the distances mean little (its pictures are noise); with real
# weights they are the quality you give up for the speed.

# %%
from zsharm.teaching.plots import show_images

by_name = {r.name: r for r in rows}
show_images([by_name["paper"].image, by_name["fast"].image], ["paper", "fast"],
            suptitle=course.caption("The paper schedule and the fast one"))
plt.show()

# %% [markdown]
# **What real weights show.** With Stable Diffusion 2 base the two pictures should be hard to tell apart by
# eye: the same colour shift towards the background, the same structure; the table's distances (fPSNR
# against the paper's output) are then the honest measure of what the fast schedule gives up, and the
# switches that touch gradients (fewer null-text steps, one AdamW step) the ones to watch. On the tiny model
# both pictures are noise and only the counts are meaningful.

# %% [markdown]
# ## Speed on your machine
#
# `zsharm bench` times whole iterations (median of several, after a warm-up) with peak memory and the counts;
# `sd2-random` is Stable Diffusion 2 base's architecture with random weights, built offline, so GPU timings
# are those of the real network:
#
# ```bash
# zsharm bench --model sd2-random --schedule paper,fast,paper-fp32-materialised --size 512 --device cuda
# ```
#
# `benchmarks/` holds the tables measured so far.

# %% [markdown]
# ## Exercises
#
# 1. Which single switch saves the most image evaluations with gradients? Which moves the output most?
#    <details><summary>Hint</summary>The ablation table has both columns: sort <code>rows</code> by each.</details>
# 2. Early stopping: run the fast schedule with `nulltext_max_inner=5, nulltext_early_stop=1e-5`. How many
#    null-text steps are actually taken (`result.nulltext.losses`), and how close is the result to paper's?
#    <details><summary>Hint</summary><code>len(result.nulltext.losses)</code> against
#    <code>sum(config.nulltext_inner_steps(i) for i in range(config.steps - 1))</code>.</details>
# 3. `edge_crop` decodes only the mask's box. What happens to its saving when the mask covers most of the
#    image? Try a large mask.
#    <details><summary>Hint</summary>The decode costs scale with the box's area: a mask's box covering the image
#    saves nothing.</details>
# 4. Why may fused attention not be used during refinement's UNet call at the image/32 resolution, but
#    everywhere else in that call?
#    <details><summary>Hint</summary>Fused attention never materialises the softmax map, and the loss needs
#    the image/32 maps with their gradients; no other layer's map is read.</details>
# 5. **Graded:** How many null-text inner steps does the fast schedule take at 50 steps at most? Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary><code>HarmonizeConfig.fast().nulltext_max_inner</code> caps the inner steps per timestep.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("10", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# ANSWER = 49
# ```
#
# The fast schedule caps inner steps at one per timestep (nulltext_max_inner=1): 49 at 50 steps.
# </details>
