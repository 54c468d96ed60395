"""The paper-style figures, which `zsharm figures` (zsharm.commands.figures) writes into figures/.

    zsharm figures                              # the figures that need no diffusion weights
    zsharm figures --model stabilityai/stable-diffusion-2-base   # ... and those that run the method
    zsharm figures --only pipeline,edges --out /tmp/figs

Without weights: `pipeline` (the method as a diagram), `edges` (Sobel and PiDiNet edge maps of real photos,
the two detectors of L_Edge; PiDiNet's published weights from $ZSHARM_PIDINET_WEIGHTS or a download) and
`decision-trace` (stage 3's Continue / Regenerate / Conclude on a scripted run). With a model:
`backgrounds` (one foreground harmonized into several backgrounds, as the paper's first figure) and
`ablations` (without refinement, without the edge loss, without self-attention replacement).
The notebooks draw the same figures through these functions.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from zsharm.errors import ZsharmError, one_line

# colours of the three decisions (and of a dropped iteration-0 candidate, and of the budget's end)
DECISION_COLOURS = {"continue": "#2a7ab9", "regenerate": "#e08214", "conclude": "#b2182b", "drop": "#999999",
                    "stop": "#4d4d4d"}

# one foreground into several backgrounds: skimage photo -> the background's description words
BACKGROUNDS = {
    "rocket": "dim blue twilight",
    "hubble_deep_field": "dim night space",
    "camera": "bright daylight greyscale",
    "coffee": "bright warm golden indoor",
}


def _plt():
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path, dpi: int = 100, palette: bool = True) -> Path:
    """Write a figure as PNG atomically (a temp file beside it, then a rename). `palette` stores it with 256
    colours: a third of the size for figures holding photos."""
    from zsharm.io.files import atomic_path
    try:
        with atomic_path(path) as temp:
            # no software version or date in the file, so a rerun with the same inputs gives the same bytes
            fig.savefig(temp, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
            if palette:
                with Image.open(temp) as png:
                    rgb = png.convert("RGB")
                rgb.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(temp, optimize=True)
    except OSError as error:
        raise ZsharmError(f"cannot save {path}: {error.strerror or one_line(error)}") from None
    return Path(path)


def demo_inputs():
    """The demo composite (PIL RGB), its mask (bool) and its caption candidates [(source, target), ...]."""
    from zsharm.demo import demo_folder
    from zsharm.io.masks import load_mask
    from zsharm.io.pictures import load_image
    folder = demo_folder()
    image = load_image(folder / "composite.png").to_pil_rgb8()
    mask = load_mask(folder / "mask.png", size=image.size)
    from zsharm.describe.captions import read_caption_pairs
    return image, mask, list(read_caption_pairs(folder / "caption.txt")[0])


def sample_photo(name: str) -> np.ndarray:
    """A photo scikit-image ships (no download) as uint8 H x W x 3."""
    import skimage.data
    photo = getattr(skimage.data, name)()
    return np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]


# ----------------------------------------------------------------------------- the pipeline diagram

def pipeline_figure():
    """The method at a glance: stage 1 describes, stage 2 harmonizes (five steps), stage 3 decides."""
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    image, mask, captions = demo_inputs()
    fig = plt.figure(figsize=(15, 6.9))
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 15)
    ax.set_ylim(-0.6, 6.4)
    ax.axis("off")

    def box(x, y, w, h, title, body, colour, size=9.2):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04,rounding_size=0.12", linewidth=1.2,
                                    edgecolor=colour, facecolor=colour + "1f"))
        ax.text(x + w / 2, y + h - 0.14, title, ha="center", va="top", fontsize=10.5, weight="bold", color=colour)
        ax.text(x + w / 2, y + h - 0.5, body, ha="center", va="top", fontsize=size, linespacing=1.45)

    def arrow(a, b, colour="#333333", rad=0.0):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=15, linewidth=1.4, color=colour,
                                     connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))

    # the inputs: the real demo composite and its mask
    ax.imshow(np.asarray(image.resize((192, 128))), extent=(0.2, 1.9, 3.5, 4.65))
    ax.imshow(np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((192, 128))), cmap="gray",
              extent=(0.2, 1.9, 2.05, 3.2))
    ax.text(1.05, 4.75, "composite", ha="center", fontsize=10, weight="bold")
    ax.text(1.05, 1.95, "foreground mask $M$", ha="center", va="top", fontsize=10, weight="bold")

    source, target = captions[0]
    obj = source.split()[0]
    fg, bg = " ".join(source.split()[1:]), " ".join(target.split()[1:])
    box(2.3, 2.9, 2.65, 2.15, "Stage 1: describe",
        f"a vision-language model answers\nwith words of a closed dictionary:\n\n{obj} & (foreground)\n{fg}\n"
        f"& (background) {bg}", "#1b7837", size=8.8)
    ax.text(3.62, 2.75, f'source: "{source}"\ntarget: "{target}"', ha="center", va="top", fontsize=8.6,
            color="#1b7837")
    arrow((1.95, 3.4), (2.3, 3.6))

    # stage 2: five steps inside one frame
    ax.add_patch(FancyBboxPatch((5.35, 0.3), 6.55, 5.0, boxstyle="round,pad=0.04,rounding_size=0.15",
                                linewidth=1.4, edgecolor="#2166ac", facecolor="none", linestyle="--"))
    ax.text(8.62, 5.2, "Stage 2: harmonize (one iteration; Stable Diffusion 2 base, DDIM 50 steps)",
            ha="center", va="top", fontsize=10.5, weight="bold", color="#2166ac")
    blue = "#2166ac"
    box(5.55, 3.45, 3.0, 1.35, "2.1 DDIM inversion",
        "image $\\to x_0, x_1, \\ldots, x_{N-1}$\nunder the source prompt, guidance 0", blue)
    box(8.75, 3.45, 3.0, 1.35, "2.2 Text-embedding refinement",
        "$\\mathcal{L}_{Emb} = \\|M - Att / \\max Att\\|^2$\n(background words vs $1 - M$)\n"
        "$+ 1000\\,\\mathrm{MSE}(Emb, Emb_0)$", blue, size=8.8)
    box(8.75, 1.75, 3.0, 1.4, "2.3 Null-text + edge loss",
        "per-step null embedding:\n$10\\,\\mathrm{MSE}(z_t, z^*_t) + \\mathcal{L}_{Edge}$\n"
        "$\\mathcal{L}_{Edge}$ = Sobel + $0.1\\cdot$PiDiNet", blue, size=8.8)
    box(5.55, 1.75, 3.0, 1.4, "2.4 Prompt-to-Prompt edit",
        "source and target branches;\nthe target takes the source's\ncross- and self-attention maps", blue,
        size=8.8)
    box(7.15, 0.45, 3.0, 0.85, "2.5 Blend", "$M \\cdot$ edited $+ (1 - M) \\cdot$ input", blue)
    arrow((4.95, 4.05), (5.55, 4.05))
    arrow((8.55, 4.05), (8.75, 4.05))
    arrow((10.25, 3.45), (10.25, 3.15))
    arrow((8.75, 2.45), (8.55, 2.45))
    arrow((7.05, 1.75), (7.6, 1.3))

    purple = "#762a83"
    box(12.25, 3.3, 2.6, 1.75, "Stage 3: evaluate",
        "a harmony classifier scores\nthe blend (ResNet-50 on\nRGB + mask, 256 px)", purple, size=8.8)
    arrow((10.15, 0.9), (12.25, 3.55), rad=0.3)
    box(12.25, 0.3, 2.6, 2.6, "decide", "", purple)
    rules = [("continue", "harmonize the blend again"), ("regenerate", "score fell twice: another\ndescription, "
             "two iterations back"), ("conclude", "fell twice again, or the\nbudget ran out: keep the best")]
    for k, (word, rule) in enumerate(rules):
        y = 2.45 - 0.72 * k
        ax.text(12.4, y, word, fontsize=9.5, weight="bold", color=DECISION_COLOURS[word], va="top")
        ax.text(12.4, y - 0.22, rule, fontsize=8.2, va="top", linespacing=1.25)
    arrow((13.55, 3.3), (13.55, 2.9))
    arrow((12.9, 0.3), (9.6, 0.3), colour=DECISION_COLOURS["continue"], rad=-0.25)
    ax.text(11.25, -0.3, "continue: the blend is the next iteration's input", fontsize=8.5, ha="center",
            color=DECISION_COLOURS["continue"], style="italic")
    arrow((13.55, 5.05), (3.62, 5.05), colour=DECISION_COLOURS["regenerate"], rad=0.13)
    ax.text(8.6, 6.05, "regenerate: stage 1 gives another description", fontsize=9,
            color=DECISION_COLOURS["regenerate"], style="italic", ha="center")
    return fig


# ----------------------------------------------------------------------------- edge maps

EDGE_PHOTOS = ("astronaut", "coffee", "chelsea")


def edge_maps(photo: np.ndarray, pidinet=None) -> dict:
    """{"Sobel E_S": H x W, "PiDiNet E_D": H x W} of a uint8 photo, as L_Edge computes them (Sobel per channel,
    shown as the mean magnitude; PiDiNet's fused map in [0, 1])."""
    import torch

    from zsharm.edit.edges import pidinet_edges, sobel

    x = torch.from_numpy(photo.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        out = {"Sobel E_S": sobel(x)[0].mean(0).numpy()}
        if pidinet is not None:
            weight = next(pidinet.parameters())  # run where the detector lives
            edges = pidinet_edges(pidinet, x.to(weight.device, weight.dtype))
            out["PiDiNet E_D"] = edges[0, 0].float().cpu().numpy()
    return out


def edges_figure(pidinet=None, photos=EDGE_PHOTOS, width: int = 256):
    """Sobel and PiDiNet-tiny edge maps of real photos (scikit-image's samples), one photo a row."""
    plt = _plt()
    if pidinet is None:
        from zsharm.edit.pidinet import load_pidinet
        pidinet = load_pidinet(variant="tiny")
    rows = []
    for name in photos:
        photo = Image.fromarray(sample_photo(name))
        photo = photo.resize((width, round(photo.height * width / photo.width)), Image.LANCZOS)
        rows.append((name, np.asarray(photo), edge_maps(np.asarray(photo), pidinet)))
    fig, axes = plt.subplots(len(rows), 3, figsize=(10.5, 2.9 * len(rows) + 0.6), squeeze=False)
    for r, (name, photo, maps) in enumerate(rows):
        axes[r, 0].imshow(photo)
        axes[r, 0].set_ylabel(name, fontsize=11)
        sob = maps["Sobel E_S"]
        # a Sobel magnitude is heavy-tailed: stretch to its 99th percentile so fine edges show
        axes[r, 1].imshow(np.clip(sob / np.percentile(sob, 99), 0, 1), cmap="gray")
        axes[r, 2].imshow(maps["PiDiNet E_D"], cmap="gray", vmin=0, vmax=1)
        if r == 0:
            axes[r, 0].set_title("photo", fontsize=11)
            axes[r, 1].set_title("Sobel $E_S$ (gradient magnitude)", fontsize=11)
            axes[r, 2].set_title("PiDiNet-tiny $E_D$ (learned edges)", fontsize=11)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(r"The two edge detectors of $\mathcal{L}_{Edge} = \|E_S(I) - E_S(I')\|^2 + "
                 r"\gamma\,\|E_D(I) - E_D(I')\|^2$", fontsize=12)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the decision trace

# The scripted run of `decision-trace`: scores in the order the loop asks for them. Iteration 0 tries both
# candidates (0.42, 0.47: the second is kept); the score then rises, falls twice (0.63 > 0.60 > 0.52:
# Regenerate, back to iteration 2's image with the other description), rises and falls twice again
# (0.71 > 0.66 > 0.62: Conclude). The best image is iteration 7's.
SCRIPTED_SCORES = (0.42, 0.47, 0.55, 0.63, 0.60, 0.52, 0.61, 0.68, 0.71, 0.66, 0.62)


def stand_in_step(rates=(0.3, 0.45)):
    """A weight-free stand-in for stage 2 in the scripted trace: each call moves the foreground part of the
    way (`rates[candidate]`) to the Reinhard colour transfer of the current image. The decisions do not
    depend on it; it only gives each iteration a picture."""
    from zsharm.quality.baselines import reinhard

    def step(image, mask, candidate):
        current = np.asarray(image, dtype=np.float32)
        target = reinhard(np.asarray(image), mask).astype(np.float32)
        rate = rates[min(candidate, len(rates) - 1)]
        return Image.fromarray(np.clip(current + rate * (target - current) + 0.5, 0, 255).astype(np.uint8))

    return step


def scripted_loop(scores=SCRIPTED_SCORES, iterations: int = 10):
    """Run `zsharm.decide.loop.run_loop` on the demo composite with the stand-in step and scripted scores.
    Returns (LoopResult, images in record order, the input image)."""
    from zsharm.describe.description import Description
    from zsharm.decide.loop import run_loop

    image, mask, captions = demo_inputs()
    candidates = [Description.from_prompts(s, t) for s, t in captions]
    move = stand_in_step()
    queue, images = list(scores), []

    def step(current, source, target):
        candidate = next(k for k, c in enumerate(candidates) if c.source == source and c.target == target)
        out = move(current, mask, candidate)
        images.append(out)
        return out

    def score(out, _mask):
        if not queue:
            raise ZsharmError("the scripted scores ran out")
        return queue.pop(0)

    result = run_loop(image, mask, candidates, step, score, iterations=iterations, progress=False)
    return result, images, image


def decision_trace_figure(result, images, original=None, title=None):
    """The paper's evaluation figure for a `LoopResult`: every harmonized image with its score and decision
    (top), and the score curve with the decisions marked (bottom). `images` are the step's outputs in record
    order (one per history record). A line joins the iterations of one description's run; after Regenerate
    an arrow shows which earlier image the new run starts from."""
    plt = _plt()
    records = result.history
    n = len(records)
    lead = 1 if original is not None else 0
    fig = plt.figure(figsize=(max(12.0, 1.5 * (n + lead)), 5.6))
    grid = fig.add_gridspec(2, n + lead, height_ratios=[1.0, 1.7], hspace=0.42, wspace=0.06)
    if original is not None:
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(original)
        ax.set_title("input\n", fontsize=9)
        ax.axis("off")
    for k, (record, image) in enumerate(zip(records, images)):
        ax = fig.add_subplot(grid[0, lead + k])
        ax.imshow(image)
        colour = DECISION_COLOURS.get(record.decision, "black")
        best = k == result.best_index
        for spine in ax.spines.values():
            spine.set_edgecolor("#1a9850" if best else colour)
            spine.set_linewidth(4 if best else 1.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"it {record.iteration} · d{record.candidate}" + ("\nBEST" if best else "\n"), fontsize=8.5,
                     color="#1a9850" if best else "black")
        score = "-" if record.score is None else f"{record.score:.3f}"
        ax.set_xlabel(f"{score}\n{record.decision}", fontsize=8.5, color=colour)

    ax = fig.add_subplot(grid[1, lead:])
    ys = [np.nan if r.score is None else r.score for r in records]
    runs, current = [], []
    for k, record in enumerate(records):  # the records of each description's run, in order
        if record.decision == "drop":
            continue
        current.append(k)
        if record.decision == "regenerate":
            runs.append(current)
            current = []
    runs.append(current)
    for run in runs:
        ax.plot(run, [ys[k] for k in run], color="#bbbbbb", zorder=1)
    for k, (y, record) in enumerate(zip(ys, records)):
        colour = DECISION_COLOURS.get(record.decision, "black")
        ax.scatter([k], [y], s=80, color=colour, zorder=2, edgecolor="#1a9850" if k == result.best_index else "none",
                   linewidth=2.5)
        ax.annotate(record.decision, (k, y), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8,
                    color=colour)
    for before, after in zip(runs, runs[1:]):
        if len(before) >= 3 and after:
            back = before[-3]  # the loop goes back to the image from two iterations earlier
            ax.annotate("", xy=(back, ys[back]), xytext=(before[-1], ys[before[-1]]),
                        arrowprops=dict(arrowstyle="-|>", color=DECISION_COLOURS["regenerate"], linestyle="--",
                                        connectionstyle="arc3,rad=0.4"))
            ax.annotate(f"the next run starts\nfrom it {records[back].iteration}'s image",
                        ((back + before[-1]) / 2, min(ys[back], ys[before[-1]])), textcoords="offset points",
                        xytext=(0, -30), ha="center", fontsize=8, color=DECISION_COLOURS["regenerate"])
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"it {r.iteration}\nd{r.candidate}" for r in records], fontsize=8)
    ax.set_xlim(-0.5, n - 0.5)
    low, high = np.nanmin(ys), np.nanmax(ys)
    ax.set_ylim(low - 0.35 * (high - low + 1e-3), high + 0.2 * (high - low + 1e-3))
    ax.set_ylabel("evaluator score\n(P harmonious)")
    ax.grid(alpha=0.3)
    descriptions = sorted({(r.candidate, r.source, r.target) for r in records})
    legend = "    ".join(f"d{c}: {s} -> {t}" for c, s, t in descriptions)
    ax.set_xlabel(legend, fontsize=8.5)
    fig.suptitle(title or "Stage 3: a score falling twice in a row triggers Regenerate, then Conclude", fontsize=12)
    return fig


# ----------------------------------------------------------------------------- figures that run the method

def paste(foreground: Image.Image, mask: np.ndarray, background: np.ndarray) -> Image.Image:
    """The foreground (inside `mask`) over a background photo scaled and centre-cropped to cover its size."""
    w, h = foreground.size
    bg = Image.fromarray(background)
    scale = max(w / bg.width, h / bg.height)
    bg = bg.resize((max(w, round(bg.width * scale)), max(h, round(bg.height * scale))), Image.LANCZOS)
    left, top = (bg.width - w) // 2, (bg.height - h) // 2
    bg = np.asarray(bg.crop((left, top, left + w, top + h)))
    return Image.fromarray(np.where(mask[..., None], np.asarray(foreground.convert("RGB")), bg))


def run_variants(pipe, image, mask, source, target, configs: dict, pidinet=None, progress=False) -> dict:
    """{name: IterationResult}: one harmonization iteration of the same input under each config."""
    from zsharm.edit.iteration import run_iteration
    return {name: run_iteration(pipe, image, mask, source, target, cfg, progress=progress, pidinet=pidinet)
            for name, cfg in configs.items()}


def ablation_configs(config) -> dict:
    """The paper's ablations of one config: the full method, and each part switched off."""
    return {"full method": config,
            "w/o refinement": config.replace(refine=False),
            "w/o edge loss": config.replace(use_edges=False),
            "w/o self-attn replacement": config.replace(self_replace_steps=0.0)}


def variants_figure(image, mask, results: dict, title=None, pidinet=None, size: float = 3.3):
    """The input and each variant's output, with how far structure (Sobel MSE in the mask) and colour
    (mean Delta E in the mask) moved from the input."""
    plt = _plt()
    from zsharm.teaching.plots import colour_shift, draw_mask_outline, structure_change

    names = list(results)
    first = results[names[0]]
    base = np.asarray(first.work_input)
    aspect = base.shape[0] / base.shape[1]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(size * (len(names) + 1), size * aspect + 1.0))
    axes[0].imshow(base)
    draw_mask_outline(axes[0], first.mask_work)
    axes[0].set_title("input (mask outlined)", fontsize=10)
    for ax, name in zip(axes[1:], names):
        out = np.asarray(results[name].work_image)
        change = structure_change(base, out, first.mask_work, pidinet)
        ax.imshow(out)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(f"colour moved {colour_shift(base, out, first.mask_work):.1f} dE\n"
                      f"edges moved {change['sobel_mse']:.2e}", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def backgrounds_figure(pipe, config, iterations: int = 1, backgrounds=None, progress=False):
    """One foreground (the demo's astronaut) pasted into several backgrounds and harmonized into each."""
    plt = _plt()
    from zsharm.harmonizer import harmonize

    image, mask, captions = demo_inputs()
    source = captions[0][0]
    obj = source.split()[0]
    backgrounds = backgrounds or BACKGROUNDS
    columns = []
    for name, words in backgrounds.items():
        composite = paste(image, mask, sample_photo(name))
        result = harmonize(composite, mask, source, f"{obj} {words}", pipe=pipe, config=config, evaluator=None,
                           iterations=iterations,
                           progress=progress)
        columns.append((name, words, composite, result.image))
    fig, axes = plt.subplots(2, len(columns), figsize=(3.6 * len(columns), 6.0), squeeze=False)
    for c, (name, words, composite, out) in enumerate(columns):
        axes[0, c].imshow(composite)
        axes[0, c].set_title(f'{name}\ntarget "{obj} {words}"', fontsize=9)
        axes[1, c].imshow(out)
        for ax in axes[:, c]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("composite", fontsize=11)
    axes[1, 0].set_ylabel(f"harmonized ({iterations} it.)", fontsize=11)
    fig.suptitle(f'One foreground, several backgrounds (source "{source}")', fontsize=12)
    fig.tight_layout()
    return fig


def ablations_figure(pipe, config, pidinet=None, progress=False):
    """The demo composite harmonized by the full method and by each ablation (one iteration each)."""
    image, mask, captions = demo_inputs()
    source, target = captions[0]
    results = run_variants(pipe, image, mask, source, target, ablation_configs(config), pidinet, progress)
    return variants_figure(image, mask, results, title=f'Ablations: "{source}" -> "{target}"', pidinet=pidinet)


# ----------------------------------------------------------------------------- making them all

FIGURES = {  # name -> (file, needs a diffusion model)
    "pipeline": ("pipeline.png", False),
    "edges": ("edge_maps.png", False),
    "decision-trace": ("decision_trace.png", False),
    "backgrounds": ("backgrounds.png", True),
    "ablations": ("ablations.png", True),
}


def make_figures(out="figures", model=None, only=None, config=None, iterations: int = 1, device=None, dtype=None,
                 progress: bool = True) -> list:
    """Write the figures named in `only` (default: every one that `model` allows) into `out`; returns paths."""
    plt = _plt()
    names = list(only) if only else [n for n, (_, needs) in FIGURES.items() if model or not needs]
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise ZsharmError(f"unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}")
    needing = [n for n in names if FIGURES[n][1]]
    if needing and not model:
        raise ZsharmError(f"figure {needing[0]!r} runs the method: give --model (e.g. "
                          "stabilityai/stable-diffusion-2-base, or tiny to try the machinery)")
    from zsharm.io.files import check_writable
    for name in names:  # before any model loads or figure is drawn
        check_writable(Path(out) / FIGURES[name][0])
    pipe = pidinet = None
    if needing:
        from zsharm.config import HarmonizeConfig
        from zsharm.models import load_pipeline
        config = config or HarmonizeConfig()
        pipe = load_pipeline(model, device=device, dtype=dtype)
    if "edges" in names or "ablations" in names:
        from zsharm.edit.pidinet import load_pidinet
        pidinet = load_pidinet(variant="tiny", device=pipe.device if pipe is not None else None)
    written = []
    for name in names:
        palette = True
        if name == "pipeline":
            fig, palette = pipeline_figure(), False  # flat colours: keep them exact
        elif name == "edges":
            fig = edges_figure(pidinet)
        elif name == "decision-trace":
            result, images, original = scripted_loop()
            fig = decision_trace_figure(result, images, original,
                                        title="Stage 3 on a scripted run (stand-in harmonizer, scripted scores)")
        elif name == "backgrounds":
            fig = backgrounds_figure(pipe, config, iterations=iterations, progress=progress)
        else:
            fig = ablations_figure(pipe, config, pidinet=pidinet, progress=progress)
        written.append(save_figure(fig, Path(out) / FIGURES[name][0], palette=palette))
        plt.close(fig)
        if progress:
            print(written[-1])
    return written
