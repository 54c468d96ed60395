# %% [markdown]
# # 09 · Evaluation: metrics and baselines against ground truth
#
# **What this notebook teaches.** How harmonization is measured when the right answer is known: the field's
# five numbers (MSE, fMSE, PSNR, fPSNR, SSIM), how they are computed and why the foreground versions exist;
# the classical baselines every method must beat; and a small benchmark of zsharm against them on composites
# with ground truth, made the way iHarmony4 was.

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "stabilityai/stable-diffusion-2-base")
QUICK = os.environ.get("ZSHARM_QUICK") == "1"
STEPS = 4 if QUICK else 50
SIZE = 128 if QUICK else 512
ITERATIONS = 1 if QUICK else 2
LIMIT = 4 if QUICK else None          # images of data/synthetic to evaluate (None: all 20)
DEVICE = None

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from zsharm.teaching.setup import is_tiny, repo_root, TINY_NOTE
from zsharm.teaching.plots import difference, show_images

ROOT = repo_root()
DATA = ROOT / "data"
plt.rcParams["figure.dpi"] = 90
if is_tiny(MODEL):
    print(TINY_NOTE)

# %% [markdown]
# ## Composites with ground truth
#
# iHarmony4 (Cong et al. 2020) made its test composites by changing an object's colour inside its mask in a
# real photo: the untouched photo is the ground truth. `data/synthetic` does the same with five public-domain
# photos and four kinds of edit each (white balance, exposure, tone, colour transfer), in iHarmony4's layout,
# with a `captions.txt` describing each edit in dictionary words so zsharm runs without a VLM.

# %%
from zsharm.benchmark.datasets import load_dataset

samples = load_dataset(DATA / "synthetic")
print(f"{len(samples)} composites; first: {samples[0].name}, captions {samples[0].captions}")
picks = [samples[i] for i in (0, 5, 10, 15)]
images = []
for sample in picks:
    composite, mask, real = sample.load()
    images += [composite, real, difference(composite, real)]
show_images(images, [t for s in picks for t in (f"{s.name}: composite", "ground truth", "|difference| x 4")],
            ncols=3, size=3.2)
plt.show()

# %% [markdown]
# ## The metrics
#
# Images on the 0-255 scale, $H \times W$ pixels, 3 channels, foreground mask $M$ with $|M|$ pixels:
#
# $$ \mathrm{MSE} = \frac{1}{3HW}\sum_{p,c} (\hat I_{p,c} - I_{p,c})^2, \qquad
#    \mathrm{fMSE} = \frac{1}{3|M|}\sum_{p \in M,\,c} (\hat I_{p,c} - I_{p,c})^2, $$
#
# $$ \mathrm{PSNR} = 10 \log_{10} \frac{255^2}{\mathrm{MSE}}, \qquad
#    \mathrm{fPSNR} = 10 \log_{10} \frac{255^2}{\mathrm{fMSE}}, $$
#
# and SSIM (Wang et al. 2004) on the whole image. MSE shrinks with the foreground's area (a tiny object
# barely moves it), which is why DoveNet introduced fMSE: MSE on the foreground alone. We compute them by
# hand for one composite and compare with `zsharm.benchmark.metrics.measure`.

# %%
from zsharm.benchmark.metrics import measure

composite, mask, real = samples[0].load()
error = (composite.astype(np.float64) - real.astype(np.float64)) ** 2
by_hand = {"mse": error.mean(), "fmse": error[mask].mean()}
by_hand["psnr"] = 10 * np.log10(255**2 / by_hand["mse"])
by_hand["fpsnr"] = 10 * np.log10(255**2 / by_hand["fmse"])
library = measure(composite, real, mask)
for key in ("mse", "fmse", "psnr", "fpsnr"):
    print(f"{key:>6}: by hand {by_hand[key]:9.3f}   zsharm.benchmark.metrics {library[key]:9.3f}")
print(f"  ssim: {library['ssim']:.4f}   (foreground {mask.mean():.0%} of the image)")

# %% [markdown]
# ## The classical baselines
#
# * **copy-paste**: the composite itself, the number to beat;
# * **Reinhard** (2001): set the foreground's per-channel mean and spread in CIELAB to the background's;
# * **histogram matching**: match each channel's foreground histogram to the background's;
# * **Poisson blending** (Perez et al. 2003): keep the foreground's gradients, take the boundary's colours.
#
# All of them pull the object towards the scene's statistics, which is right only when the object's true
# colours resemble the scene's.

# %%
from zsharm.benchmark.baselines import BASELINES

composite, mask, real = picks[2].load()
outputs = {name: method(composite, mask) for name, method in BASELINES.items()}
show_images([real] + list(outputs.values()), ["ground truth"] + [f"{n}: fMSE {measure(o, real, mask)['fmse']:.0f}"
                                                                for n, o in outputs.items()], size=3.0)
plt.show()

# %% [markdown]
# ## A small benchmark
#
# `zsharm.benchmark.compare.evaluate` runs every method on every sample and measures it. The `zsharm` method runs
# stage 2 with each sample's caption (the first candidate) for `ITERATIONS` iterations. On the full set at
# 50 steps this takes a GPU a few minutes per image; `LIMIT` keeps it short.

# %%
from zsharm.benchmark.compare import evaluate, markdown_table, summarize, zsharm_method
from zsharm.config import HarmonizeConfig

methods = dict(BASELINES)
ours = zsharm_method(MODEL, HarmonizeConfig(steps=STEPS, size=SIZE), ITERATIONS, device=DEVICE)
ours.wants_sample = True  # it reads each sample's caption
methods["zsharm"] = ours
# every k-th sample, so a short run still covers the five photos and the four kinds of edit
chosen = samples[:: max(1, len(samples) // LIMIT)][:LIMIT] if LIMIT else samples
rows = evaluate(chosen, methods)
summary = summarize(rows)
print(markdown_table(summary))

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
names = [s["method"] for s in summary]
colours = ["grey"] + [f"C{i}" for i in range(len(names) - 1)]
axes[0].bar(names, [s["fmse"] for s in summary], color=colours)
axes[0].set_ylabel("mean fMSE (lower is better)")
axes[0].set_title(f"{len(chosen)} composites of data/synthetic")
for k, name in enumerate(names):
    mine = [r["fmse"] for r in rows if r["method"] == name]
    axes[1].scatter(np.full(len(mine), k) + np.linspace(-0.15, 0.15, len(mine)), mine, color=colours[k])
axes[1].set_xticks(range(len(names)))
axes[1].set_xticklabels(names)
axes[1].set_yscale("log")
axes[1].set_ylabel("fMSE per image (log)")
axes[1].set_title("per image")
for ax in axes:
    ax.grid(alpha=0.3, axis="y")
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read it: a method helps where it lands below copy-paste. The per-image spread matters as much as the
# mean: classical methods win big on some images and lose big on others. (With the tiny random model the
# `zsharm` row measures noise; with Stable Diffusion it measures the method.)
#
# The same from the command line, with a CSV per image and a summary:
#
# ```bash
# zsharm evaluate data/synthetic --methods copy-paste,reinhard,histogram,poisson,zsharm --out runs/synthetic
# ```
#
# ## Exercises
#
# 1. Show that $\mathrm{MSE} = \frac{|M|}{HW}\,\mathrm{fMSE}$ when only the foreground differs. Check it on
#    the numbers above (the background differs by JPEG noise only).
# 2. Which kind of edit (the last digit of the name: 1 white balance, 2 exposure, 3 tone, 4 colour transfer)
#    is hardest for each baseline? Group `rows` by it.
# 3. Run zsharm with 1, 2 and 3 iterations on the same images. Does fMSE keep falling?
# 4. Ground truth rewards getting back the *original* colours, but harmonization only needs *plausible*
#    ones. Find an image where a result looks harmonious and still scores badly. What would a user study
#    (zsharm.benchmark.userstudy) add?
