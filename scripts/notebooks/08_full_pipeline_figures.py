# %% [markdown]
# # 08 · The full pipeline and the paper's figures
#
# **What this notebook teaches.** How the pieces of notebooks 01-07 compose into the method, and how to
# regenerate the paper-style figures: one foreground harmonized into several backgrounds (the paper's first
# figure) and the ablations without refinement, without the edge loss and without self-attention
# replacement. Every figure here is drawn by `zsharm.teaching.figures`, the same code as `zsharm figures`.

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "stabilityai/stable-diffusion-2-base")
QUICK = os.environ.get("ZSHARM_QUICK") == "1"
STEPS = 4 if QUICK else 50
SIZE = 128 if QUICK else 512
ITERATIONS = 1 if QUICK else 3
LOOP_ITERATIONS = 2 if QUICK else 10
SAVE_FIGURES = None   # a folder (e.g. "../figures") to write the figures to; None: only show them
DEVICE = None

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import Image as ShowPNG
from IPython.display import display

from zsharm.config import HarmonizeConfig
from zsharm.teaching.figures import save_figure
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


def keep(fig, name):
    """Show a figure, and write it to SAVE_FIGURES when that is set."""
    if SAVE_FIGURES:
        print("wrote", save_figure(fig, os.path.join(SAVE_FIGURES, name)))
    plt.show()

# %% [markdown]
# ## The whole method, end to end
#
# Stage 1 gives candidate descriptions (here the demo's captions; notebook 01 asks a VLM), stage 2 harmonizes
# (`run_iteration`), stage 3 scores and decides (`run_loop` with an evaluator; here an untrained one unless
# `ZSHARM_EVALUATOR` names a checkpoint, so its decisions are arbitrary). The output is the best-scoring
# image, carried to the composite's full resolution.

# %%
import warnings

from zsharm.describe.describers import GivenDescriber, read_caption_file
from zsharm.decide.evaluator import load_evaluator
from zsharm.edit.iteration import run_iteration
from zsharm.loop import run_loop

image = load_image(DATA / "demo" / "composite.png").to_pil_rgb8()
mask = load_mask(DATA / "demo" / "mask.png", size=image.size)
describer = GivenDescriber(read_caption_file(DATA / "demo" / "caption.txt")[0])      # stage 1
candidates = describer.describe(image, mask, n=2)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    evaluator = load_evaluator(os.environ.get("ZSHARM_EVALUATOR", "random:tiny" if QUICK else "random"), DEVICE)


def stage2(current, source, target):
    return run_iteration(pipe, current, mask, source, target, config, progress=False, pidinet=pidinet).image


loop = run_loop(image, mask, candidates, stage2, evaluator.score, iterations=LOOP_ITERATIONS, progress=False)
show_images([image, loop.image], ["composite", f"result: iteration {loop.best_iteration}, "
                                               f"description {loop.best.candidate}"], size=4.5)
plt.show()

# %% [markdown]
# ## Figure: one foreground, several backgrounds
#
# The paper opens with one object harmonized into several scenes: the same source description, a different
# target description per background. We paste the demo's astronaut (with its mask) into four photos that
# scikit-image ships, each described with dictionary words, and harmonize each for `ITERATIONS` iterations.

# %%
from zsharm.teaching.figures import BACKGROUNDS, backgrounds_figure

for name, words in BACKGROUNDS.items():
    print(f"{name:>18}: target words {words!r}")
keep(backgrounds_figure(pipe, config, iterations=ITERATIONS), "backgrounds.png")

# %% [markdown]
# ## Figure: ablations
#
# The demo composite harmonized by the full method and with one part switched off at a time:
#
# * **w/o refinement** (`refine=False`): the condition words keep their unrefined embeddings, so their
#   attention spreads over the whole image (notebook 04);
# * **w/o edge loss** (`use_edges=False`): null-text optimisation fits the latents only (notebook 05);
# * **w/o self-attention replacement** (`self_replace_steps=0`): the target branch may redraw the structure
#   (notebook 06).
#
# Under each picture: how far colour moved inside the mask (mean $\Delta E$) and how far the edges moved
# (Sobel MSE against the input).

# %%
from zsharm.teaching.figures import ablations_figure

keep(ablations_figure(pipe, config, pidinet=pidinet), "ablations.png")

# %% [markdown]
# ## The figures that need no diffusion weights
#
# Three figures are drawn without Stable Diffusion and are committed in `figures/`: the pipeline diagram,
# the edge maps of real photos (notebook 05) and the scripted decision trace (notebook 07).

# %%
for name in ("pipeline.png", "edge_maps.png", "decision_trace.png"):
    path = ROOT / "figures" / name
    if path.is_file():
        print(name)
        display(ShowPNG(filename=str(path), width=900))

# %% [markdown]
# ## Regenerating every figure
#
# ```bash
# zsharm figures                                   # pipeline, edges, decision trace into figures/
# zsharm figures --model stabilityai/stable-diffusion-2-base --iterations 3   # + backgrounds, ablations
# zsharm figures --only ablations --model tiny --steps 4 --size 128 --out /tmp/figs   # a quick look
# ```
#
# ## Exercises
#
# 1. Add a background of your own to `BACKGROUNDS` (any RGB photo as an array, and its dictionary words).
#    Which words work best for a night scene?
# 2. Run the ablations on `data/composites/composite/003.png` (the cup in a greyscale photo). Which part of
#    the method matters most there?
# 3. Make the backgrounds figure with `HarmonizeConfig.fast()` and compare its time and look with the paper
#    schedule's.
# 4. The paper's figures are at 512 px. How would you make a figure that shows the full-resolution
#    output's detail next to the work-size result?
