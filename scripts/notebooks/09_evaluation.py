# %% [markdown]
# # 09 · Evaluation: metrics and baselines against ground truth
#
# **What this notebook teaches.** How harmonization is measured when the right answer is known: the field's
# five numbers (MSE, fMSE, PSNR, fPSNR, SSIM), how they are computed and why the foreground versions exist;
# the classical baselines every method must beat; and a small benchmark of zsharm against them on composites
# with ground truth, made the way iHarmony4 was.

# %% cost {"iterations": 8, "memory": "paper", "note": "Course size: 4 composites x 2 iterations. FULL evaluates all 20 composites: 40 iterations, five times as long."}

# %% install

# %% tags=["parameters"]
import os

MODEL = os.environ.get("ZSHARM_MODEL", "auto")   # auto: SD 2 base where it can run (a GPU), else the toy prior
QUICK = os.environ.get("ZSHARM_QUICK") == "1"   # the tests' run: a tiny model, 4 steps at 128 px
FULL = False                                     # True: the paper's settings (all 20 composites)
ITERATIONS = 1 if QUICK else 2
DEVICE = None                                    # None: CUDA if there is one, else Apple MPS, else CPU

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np

from zsharm.teaching.plots import difference, show_images
from zsharm.teaching.setup import setup

course = setup(MODEL, DEVICE, quick=QUICK, full=FULL)
DATA = course.data
LIMIT = course.eval_images   # composites of data/synthetic to evaluate (None: all 20)

# %% [markdown]
# ## Composites with ground truth
#
# iHarmony4 (Cong et al. 2020) made its test composites by changing an object's colour inside its mask in a
# real photo: the untouched photo is the ground truth. `data/synthetic` does the same with five public-domain
# photos and four kinds of edit each (white balance, exposure, tone, colour transfer), in iHarmony4's layout,
# with a `captions.txt` describing each edit in dictionary words so zsharm runs without a VLM.

# %%
from zsharm.quality.datasets import load_dataset

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
# hand for one composite and compare with `zsharm.quality.metrics.measure`.

# %%
from zsharm.quality.metrics import measure

composite, mask, real = samples[0].load()
error = (composite.astype(np.float64) - real.astype(np.float64)) ** 2
by_hand = {"mse": error.mean(), "fmse": error[mask].mean()}
by_hand["psnr"] = 10 * np.log10(255**2 / by_hand["mse"])
by_hand["fpsnr"] = 10 * np.log10(255**2 / by_hand["fmse"])
library = measure(composite, real, mask)
for key in ("mse", "fmse", "psnr", "fpsnr"):
    print(f"{key:>6}: by hand {by_hand[key]:9.3f}   zsharm.quality.metrics {library[key]:9.3f}")
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
from zsharm.quality.baselines import BASELINES

composite, mask, real = picks[2].load()
outputs = {name: method(composite, mask) for name, method in BASELINES.items()}
show_images([real] + list(outputs.values()), ["ground truth"] + [f"{n}: fMSE {measure(o, real, mask)['fmse']:.0f}"
                                                                for n, o in outputs.items()], size=3.0)
plt.show()

# %% [markdown]
# ## A small benchmark
#
# `zsharm.quality.compare.evaluate` runs every method on every sample and measures it. The `zsharm` method
# (`zsharm.harmonizer.zsharm_method`) runs stage 2 with each sample's caption (the first candidate) for
# `ITERATIONS` iterations. On the full set at 50 steps this takes a GPU a few minutes per image; `LIMIT` keeps it
# short.

# %%
from zsharm.quality.compare import evaluate, markdown_table, summarize
from zsharm.harmonizer import zsharm_method
from zsharm.config import HarmonizeConfig

methods = dict(BASELINES)
methods["zsharm"] = zsharm_method(MODEL, course.config(), ITERATIONS, device=DEVICE)  # reads each sample's caption
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
axes[0].set_title(course.caption(f"{len(chosen)} composites of data/synthetic"))
# one line per image across the methods: whether a method helps *that* image, not only on average
for sample in sorted({r["name"] for r in rows}):
    values = [next(r["fmse"] for r in rows if r["method"] == n and r["name"] == sample) for n in names]
    axes[1].plot(range(len(names)), values, marker="o", alpha=0.7, label=sample)
axes[1].set_xticks(range(len(names)))
axes[1].set_xticklabels(names)
axes[1].set_yscale("log")
axes[1].set_ylabel("fMSE per image (log)")
axes[1].set_title("per image, paired across methods")
axes[1].legend(fontsize=7, ncol=2)
for ax in axes:
    ax.grid(alpha=0.3, axis="y")
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read it: a method helps where it lands below copy-paste. The per-image spread matters as much as the
# mean: classical methods win big on some images and lose big on others; a line that falls from copy-paste
# to a method is an image that method helped. (With the tiny random model the `zsharm` row measures noise;
# with Stable Diffusion it measures the method.)
#
# **What real weights show.** With Stable Diffusion 2 base, zsharm should land below copy-paste on most
# images in fMSE, with the largest gains on the exposure and white-balance edits; colour transfer, where the
# edit's colours are far from any single description, is the hardest. Ground-truth metrics reward getting back
# the *original* colours, while the method aims at *plausible* ones, so expect it behind the classical
# baselines on some images: the paper's own table compares it with zero-shot and trained methods on iHarmony4.
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
#    <details><summary>Hint</summary>The sum of squared errors is the same over the whole image and over the
#    foreground when the background's errors are zero; divide it by 3HW and by 3|M|.</details>
# 2. Which kind of edit (the last digit of the name: 1 white balance, 2 exposure, 3 tone, 4 colour transfer)
#    is hardest for each baseline? Group `rows` by it.
#    <details><summary>Hint</summary><code>r["name"][-1]</code> is the kind; average <code>r["fmse"]</code> per
#    (method, kind).</details>
# 3. Run zsharm with 1, 2 and 3 iterations on the same images. Does fMSE keep falling?
#    <details><summary>Hint</summary>One <code>zsharm_method(MODEL, course.config(), n, device=DEVICE)</code> per
#    n, each under its own name in <code>methods</code>; the paired lines then show the trend per image.</details>
# 4. Ground truth rewards getting back the *original* colours, but harmonization only needs *plausible*
#    ones. Find an image where a result looks harmonious and still scores badly. What would a user study
#    (zsharm.quality.userstudy) add?
#    <details><summary>Hint</summary>Look for a result whose colours fit the scene but differ from the photo's
#    (the edit changed the object's own colour). A user study asks which looks real, not which is right.</details>
# 5. **Graded:** A 100x100 result differs from its ground truth only inside a 20x20 foreground, and its MSE is 4. What is its fMSE? Put your answer in `ANSWER` below; the check cell says whether it is right.
#    <details><summary>Hint</summary>The squared errors sum to the same total; MSE divides it by HW, fMSE by |M|.</details>

# %%
from zsharm.teaching.exercises import check

ANSWER = None  # your answer to exercise 5
right = check("09", ANSWER)

# %% [markdown]
# <details><summary>Solution</summary>
#
# ```python
# ANSWER = 4 * 100 * 100 / (20 * 20)  # 100
# ```
#
# fMSE = MSE x HW / |M|: the foreground is a 25th of the image, so its error is 25 times the MSE.
# </details>
