"""Explorers: one interactive view per stage, over results computed once.

Compute once, explore freely: each `*_views` function runs the model and keeps what its explorer shows; each
`*_explorer` function builds an `Explorer` from those views alone, so moving a control redraws a figure and
never runs diffusion again (the live edge map of your own image runs PiDiNet, an edge detector, on upload).

An Explorer is a matplotlib figure drawn into an `ipywidgets.Image` under its controls (sliders, dropdowns:
keyboard and mouse work in JupyterLab and Colab). It uses no `interact` and no `Output` widget: nbclient
(papermill, nbconvert) mimics an Output widget by sending comm messages on the kernel's shell socket while it
waits on that socket for the cell's reply, and under load the reply's wake-up is lost, so the cell hangs
until the execution timeout (nteract/papermill#723, jupyter/nbclient#312). An Image widget's value is set by
the kernel only; nothing flows back.

Displayed, an Explorer gives two outputs: the widget, then a plain PNG of its first state. A page with no live
widget (GitHub, nbconvert, a saved notebook reopened before its kernel runs, where the widget itself can only
say "Error displaying widget: model not found") shows that PNG. In JupyterLab a live explorer hides it: the
widget carries a style rule hiding the output right after an explorer's, so the picture is not shown twice.
The picture keeps its own size (a flex column would otherwise stretch it to the output's full width).

    explorer = inversion_explorer(views)
    explorer                         # the last line of a cell displays it
    explorer.update(step=3)          # what moving the slider does; returns the figure
"""

import base64
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from zsharm.teaching.plots import (
    NORMALISATION,
    as_array,
    draw_mask_outline,
    latent_preview,
    overlay_map,
)

CMAP = "magma"          # perceptual, readable in grey: attention and edge maps
DIFF_CMAP = "RdBu_r"    # signed differences, white at zero


# ----------------------------------------------------------------------------- the explorer

class Explorer:
    """A figure redrawn by `draw(figure, **values)` whenever one of `controls` ({name: ipywidget}) changes."""

    def __init__(self, draw, controls: dict, figsize=(10, 4), dpi: int = 80):
        import ipywidgets
        from matplotlib.figure import Figure
        self.draw = draw
        self.controls = dict(controls)
        # a bare Figure, not pyplot's: the inline backend must not display every redraw on its own
        self.figure = Figure(figsize=figsize, dpi=dpi)
        # flex-start: the column would stretch the picture to the output's width; its own size, at most that
        self.image = ipywidgets.Image(format="png", layout=ipywidgets.Layout(align_self="flex-start",
                                                                             max_width="100%", height="auto"))
        self.png = b""
        self.draws = 0
        self._holding = False
        for control in self.controls.values():
            control.observe(self._changed, names="value")
        self.update()

    def values(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def _changed(self, _change):
        if not self._holding:
            self.update()

    def update(self, **values):
        """Set controls to `values` (as a student would), redraw once, return the figure."""
        unknown = set(values) - set(self.controls)
        if unknown:
            raise KeyError(f"no control named {sorted(unknown)}; controls: {sorted(self.controls)}")
        self._holding = True
        try:
            for name, value in values.items():
                self.controls[name].value = value
        finally:
            self._holding = False
        self.figure.clear()
        self.draw(self.figure, **self.values())
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", bbox_inches="tight")
        self.png = buffer.getvalue()
        self.image.value = self.png
        self.draws += 1
        return self.figure

    def options(self, name: str) -> list:
        """Every value control `name` can take (sliders: their ticks), for tests and tours."""
        control = self.controls[name]
        if not hasattr(control, "options") and not hasattr(control, "min"):
            return []  # a file upload: its values come from the user
        if hasattr(control, "options"):
            return [o[1] if isinstance(o, tuple) else o for o in control.options]
        if isinstance(control.value, bool):
            return [False, True]
        if isinstance(control.value, int):
            return list(range(control.min, control.max + 1, control.step))
        count = int(round((control.max - control.min) / control.step)) + 1
        return [round(control.min + k * control.step, 10) for k in range(count)]

    def widget(self):
        import ipywidgets
        box = ipywidgets.VBox([ipywidgets.HBox(list(self.controls.values()),
                                               layout=ipywidgets.Layout(flex_flow="row wrap")), self.image,
                               ipywidgets.HTML(HIDE_STILL)])
        box.add_class(LIVE_CLASS)
        return box

    def _repr_mimebundle_(self, **kwargs):
        """The widget's bundle, with a line of text where no widget can be shown."""
        bundle = self.widget()._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = STILL_NOTE
        return bundle

    def still(self) -> dict:
        """The first state's picture as a plain output bundle (what a page without the live widget shows). Its HTML
        form also hides the widget output before it when that cannot be shown (a notebook reopened without its
        kernel says "Error displaying widget" there); PNG for front ends that show no HTML."""
        png = base64.b64encode(self.png).decode("ascii")
        html = f'{HIDE_DEAD_WIDGET}<img class="{STILL_CLASS}" src="data:image/png;base64,{png}" alt="{STILL_NOTE}">'
        return {"text/html": html, "image/png": png, "text/plain": STILL_NOTE}

    def _ipython_display_(self):
        from IPython.display import display
        bundle = self._repr_mimebundle_()
        display(bundle[0] if isinstance(bundle, tuple) else bundle, raw=True)
        display(self.still(), raw=True)


LIVE_CLASS = "zsharm-explorer"
# JupyterLab's output DOM: each output is a .jp-OutputArea-child; a live explorer hides the still after it
HIDE_STILL = (f"<style>.jp-OutputArea-child:has(.{LIVE_CLASS}) + .jp-OutputArea-child "
              "{ display: none; }</style>")
STILL_NOTE = "(an interactive explorer: run the notebook to move its controls)"
STILL_CLASS = "zsharm-still"
# the widget output just before a still, unless it holds a live explorer: "Loading widget..." or "Error displaying
# widget: model not found" once the kernel that held the widget is gone
HIDE_DEAD_WIDGET = (f"<style>.jp-OutputArea-child:not(:has(.{LIVE_CLASS})):has(+ .jp-OutputArea-child .{STILL_CLASS}) "
                    "{ display: none; }</style>")


def _slider(options, value=None, description=""):
    import ipywidgets
    options = list(options)
    return ipywidgets.SelectionSlider(options=options, value=options[0] if value is None else value,
                                      description=description, continuous_update=False,
                                      style={"description_width": "initial"})


def _dropdown(options, value=None, description=""):
    import ipywidgets
    options = list(options)
    return ipywidgets.Dropdown(options=options, value=options[0] if value is None else value,
                               description=description, style={"description_width": "initial"})


def _show(ax, picture, title=None, mask=None):
    ax.imshow(as_array(picture))
    if mask is not None:
        draw_mask_outline(ax, mask)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)


def _heat(ax, image, heat, title=None, mask=None, vmax=1.0, alpha=0.6, cmap=CMAP):
    """A map over an image on a fixed scale [0, vmax]; returns the mappable, for a colour bar."""
    return overlay_map(ax, image, heat, title=title, alpha=alpha, cmap=cmap, mask=mask, normalize=False, vmax=vmax,
                       fontsize=10)


def _integer_ticks(ax):
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ----------------------------------------------------------------------------- 02: inversion and null text

@dataclass
class InversionViews:
    """What notebook 02's explorer shows, per denoising step k = 1 .. N-1."""
    work_input: np.ndarray
    inverted: list                 # previews of x_0 .. x_{N-1} (first three latent channels)
    decoded: dict                  # {trajectory name: [decoded image after step k]}
    errors: dict                   # {trajectory name: MSE to the inverted latent after step k}
    losses: list = field(default_factory=list)   # null-text records (dicts with "step")


def inversion_views(run, inversion, trajectories: dict, nulltext=None, work_input=None) -> InversionViews:
    """Decode every latent of each trajectory ({name: [latent after step k]}) once, with the run's VAE."""
    from zsharm.edit.diffusion import decode_latents, to_uint8
    from zsharm.teaching.trace import latent_errors
    decoded, errors = {}, {}
    with torch.no_grad():
        for name, trajectory in trajectories.items():
            decoded[name] = [to_uint8(decode_latents(run, "notebook", z[:1]))[0] for z in trajectory]
            errors[name] = latent_errors(trajectory, inversion)
    return InversionViews(work_input=as_array(work_input) if work_input is not None else None,
                          inverted=[latent_preview(z) for z in inversion.latents], decoded=decoded, errors=errors,
                          losses=list(nulltext.losses) if nulltext is not None else [])


def inversion_explorer(views: InversionViews) -> Explorer:
    """A step slider over the inversion trajectory: the inverted latent a step should land on, each
    trajectory's decoded image after it, the error curves and the null-text losses at that step."""
    n = len(next(iter(views.errors.values())))
    names = list(views.decoded)

    def draw(fig, step):
        k = step - 1
        grid = fig.add_gridspec(2, max(2, len(names) + 1))
        ax = fig.add_subplot(grid[0, 0])
        ax.imshow(views.inverted[-2 - k])
        ax.set_title(f"inverted x_{len(views.inverted) - 2 - k} (target of step {step})", fontsize=10)
        ax.axis("off")
        for j, name in enumerate(names):
            _show(fig.add_subplot(grid[0, j + 1]), views.decoded[name][k], f"{name}\nafter step {step}")
        bottom = grid[1, :].subgridspec(1, 2)
        ax = fig.add_subplot(bottom[0, 0])
        for name, err in views.errors.items():
            ax.plot(np.arange(1, n + 1), err, marker="o", markersize=3, label=name)
        ax.axvline(step, color="k", linewidth=1)
        ax.set_yscale("log")
        ax.set_xlabel("denoising step")
        ax.set_ylabel("MSE to inverted latent")
        _integer_ticks(ax)
        ax.legend(fontsize=7)
        ax = fig.add_subplot(bottom[0, 1])
        if views.losses:
            x = np.arange(len(views.losses))
            for key in ("null_text_mse", "sobel_mse", "pidinet_edge_mse"):
                if key in views.losses[0]:
                    ax.plot(x, [r[key] for r in views.losses], marker="o", markersize=3, label=key)
            here = [i for i, r in enumerate(views.losses) if r.get("step") == k]
            if here:
                ax.axvspan(here[0] - 0.5, here[-1] + 0.5, color="gold", alpha=0.4, label=f"step {step}")
            ax.set_yscale("log")
            ax.set_xlabel("null-text inner step")
            ax.set_ylabel("loss")
            _integer_ticks(ax)
            ax.legend(fontsize=7)
        else:
            ax.axis("off")
        fig.tight_layout()

    return Explorer(draw, {"step": _slider(range(1, n + 1), description="denoising step")}, figsize=(11, 6))


# ----------------------------------------------------------------------------- 03: attention maps

MEAN_LAYERS = "mean of image/32 layers"


def cross_attention_explorer(trace, mask_work) -> Explorer:
    """Word, layer and step over a recorded trace (notebook 03): one cross-attention map, scaled to its max."""
    recorder, steps = trace.recorder, trace.recorder.steps
    words = [w for w, _ in trace.spans] + ["<start>"]

    def draw(fig, word, layer, step):
        positions = [0] if word == "<start>" else dict(trace.spans)[word]
        heat = recorder.mean(steps=[step]) if layer == MEAN_LAYERS else recorder.map(step, layer)
        heat = heat[..., positions].sum(-1)
        ax = fig.add_subplot(1, 1, 1)
        shown = _heat(ax, trace.image, heat / (heat.max() + 1e-12), mask=mask_work,
                      title=f'"{word}", {layer}, step {step} (t={trace.timesteps[steps.index(step)]}); '
                            f"max {float(heat.max()):.3f}")
        fig.colorbar(shown, ax=ax, fraction=0.046, label=NORMALISATION)

    return Explorer(draw, {"word": _dropdown(words, words[-2], "word"),
                           "layer": _dropdown([MEAN_LAYERS] + recorder.layers(True), description="layer"),
                           "step": _slider(steps, description="step")}, figsize=(6, 4.6))


def self_attention_explorer(trace, mask_work, start=(0, 0)) -> Explorer:
    """Layer, step and query pixel over a recorded trace: where one pixel draws its features from."""
    import ipywidgets
    recorder, steps = trace.recorder, trace.recorder.steps
    layers = recorder.layers(False)
    h, w = recorder.shape_of(layers[0], False)[:2]

    def draw(fig, layer, step, row, column):
        heat = recorder.map(step, layer, is_cross=False)
        hh, ww = heat.shape[:2]
        row, column = min(row, hh - 1), min(column, ww - 1)
        heat = heat[row, column].reshape(hh, ww)
        ax = fig.add_subplot(1, 1, 1)
        shown = _heat(ax, trace.image, heat / (heat.max() + 1e-12), mask=mask_work,
                      title=f"self-attention of pixel ({row}, {column}), {layer}, step {step}")
        W, H = trace.image.size
        ax.plot([(column + 0.5) * W / ww], [(row + 0.5) * H / hh], "w+", markersize=16, markeredgewidth=3)
        fig.colorbar(shown, ax=ax, fraction=0.046, label=NORMALISATION)

    return Explorer(draw, {"layer": _dropdown(layers, description="layer"),
                           "step": _slider(steps, description="step"),
                           "row": ipywidgets.IntSlider(value=start[0], min=0, max=h - 1, description="row",
                                                       continuous_update=False),
                           "column": ipywidgets.IntSlider(value=start[1], min=0, max=w - 1, description="column",
                                                          continuous_update=False)}, figsize=(6, 4.6))


# ----------------------------------------------------------------------------- 04: embedding refinement

def refinement_explorer(refinement, work_input, goal, mask_work) -> Explorer:
    """An AdamW-step slider over L_Emb's maps (A_fg / max and A_bg / max beside their goals M and 1 - M), with
    the loss curve marking the position. Needs `refinement.maps` (one (A_fg, A_bg) pair per AdamW step)."""
    maps, losses = refinement.maps, refinement.losses
    goal = np.asarray(goal.detach().cpu() if torch.is_tensor(goal) else goal, dtype=np.float32)
    labels = [f"{k}: timestep {r['step']}, iter {r['iter']}" for k, r in enumerate(losses)]

    def draw(fig, position):
        k = labels.index(position)
        a_fg, a_bg = (m.float() / (m.float().max() + 1e-12) for m in maps[k])
        grid = fig.add_gridspec(2, 4, height_ratios=[1.2, 1])
        panels = [("goal M", goal), ("A_fg / max A_fg", a_fg), ("goal 1 - M", 1 - goal), ("A_bg / max A_bg", a_bg)]
        for j, (title, heat) in enumerate(panels):
            ax = fig.add_subplot(grid[0, j])
            shown = _heat(ax, work_input, heat, title=title, mask=mask_work)
        fig.colorbar(shown, ax=fig.axes[:4], fraction=0.02, label="same scale, 0 to 1")
        ax = fig.add_subplot(grid[1, :])
        x = np.arange(len(losses))
        for key in ("attn_fg", "attn_bg", "loss_emb", "loss_reg"):
            ax.plot(x, [r[key] for r in losses], marker="o", markersize=3, label=key)
        ax.axvline(k, color="k", linewidth=1.2)
        ax.set_xlabel("AdamW step")
        ax.set_ylabel("loss")
        _integer_ticks(ax)
        ax.legend(fontsize=8, ncol=4)
        ax.set_title(f"step {k}: L_Emb = {losses[k]['loss_emb']:.4f} (fg {losses[k]['attn_fg']:.4f}, "
                     f"bg {losses[k]['attn_bg']:.4f})", fontsize=10)

    return Explorer(draw, {"position": _slider(labels, description="AdamW step")}, figsize=(11, 6))


# ----------------------------------------------------------------------------- 05: edges

def _normalised(edge) -> np.ndarray:
    e = as_array(edge)
    e = e.mean(-1) if e.ndim == 3 else e  # Sobel is per channel: its mean magnitude
    return e / (e.max() + 1e-8)


@dataclass
class EdgeViews:
    """Each variant's output with its Sobel and PiDiNet maps, and the input's, at work size."""
    work_input: np.ndarray
    mask_work: np.ndarray
    outputs: dict          # {name: H x W x 3}
    sobel: dict            # {name: H x W in [0, 1]}, "input" included
    pidinet: dict          # likewise
    scores: dict           # {name: (Sobel MSE, PiDiNet MSE, colour dE)} against the input


def edge_views(results: dict, pidinet) -> EdgeViews:
    """Edge maps of every result of a sweep ({name: IterationResult}) and of their input, computed once."""
    from zsharm.teaching.figures import edge_maps
    from zsharm.teaching.plots import colour_shift, structure_change
    first = next(iter(results.values()))
    pictures = {"input": np.asarray(first.work_input)}
    pictures.update({name: np.asarray(r.work_image) for name, r in results.items()})
    sobel, pid = {}, {}
    for name, picture in pictures.items():
        maps = edge_maps(picture, pidinet)
        sobel[name], pid[name] = _normalised(maps["Sobel E_S"]), _normalised(maps["PiDiNet E_D"])
    scores = {}
    for name, r in results.items():
        s = structure_change(pictures["input"], pictures[name], first.mask_work, pidinet)
        scores[name] = (s["sobel_mse"], s["pidinet_mse"], colour_shift(pictures["input"], pictures[name], first.mask_work))
    return EdgeViews(work_input=pictures["input"], mask_work=first.mask_work,
                     outputs={n: p for n, p in pictures.items() if n != "input"}, sobel=sobel, pidinet=pid,
                     scores=scores)


def edge_sweep_explorer(views: EdgeViews) -> Explorer:
    """A slider over a precomputed sweep (gamma values, no edge loss): the output, its Sobel and PiDiNet maps
    side by side, their difference, and how far each moved from the input's."""
    names = list(views.outputs)

    def draw(fig, variant):
        # constrained layout makes room for the title and gives each colour bar its own space
        fig.set_layout_engine("constrained")
        axes = fig.subplots(2, 3)
        _show(axes[0, 0], views.outputs[variant], f"output: {variant}", views.mask_work)
        axes[0, 1].imshow(views.sobel[variant], cmap="gray", vmin=0, vmax=1)
        axes[0, 1].set_title("Sobel E_S (output)", fontsize=10)
        axes[0, 2].imshow(views.pidinet[variant], cmap="gray", vmin=0, vmax=1)
        axes[0, 2].set_title("PiDiNet E_D (output)", fontsize=10)
        shown = axes[1, 0].imshow(views.sobel[variant] - views.pidinet[variant], cmap=DIFF_CMAP, vmin=-1, vmax=1)
        axes[1, 0].set_title("Sobel - PiDiNet (red: texture only Sobel sees)", fontsize=9)
        fig.colorbar(shown, ax=axes[1, 0], fraction=0.046)
        for ax, kind, maps in ((axes[1, 1], "Sobel", views.sobel), (axes[1, 2], "PiDiNet", views.pidinet)):
            moved = ax.imshow(maps[variant] - maps["input"], cmap=DIFF_CMAP, vmin=-1, vmax=1)
            ax.set_title(f"{kind}: output - input", fontsize=10)
            draw_mask_outline(ax, views.mask_work, color="k", linewidth=0.8)
        fig.colorbar(moved, ax=axes[1, 2], fraction=0.046)
        for ax in axes.flat:
            ax.axis("off")
        s, p, de = views.scores[variant]
        fig.suptitle(f"{variant}: Sobel MSE {s:.2e}, PiDiNet MSE {p:.2e}, colour dE {de:.2f} (inside the mask)",
                     fontsize=11)

    return Explorer(draw, {"variant": _slider(names, description="variant")}, figsize=(11, 7))


def _decode_upload(value):
    """The first file of a FileUpload value (ipywidgets 8: a tuple of dicts with `content`) as RGB array."""
    from PIL import Image
    item = value[0] if isinstance(value, (tuple, list)) else next(iter(value.values()))
    return np.asarray(Image.open(io.BytesIO(bytes(item["content"]))).convert("RGB"))


def live_edges_explorer(pidinet, image, long_side: int = 320) -> Explorer:
    """Upload your own picture: its Sobel and PiDiNet maps, side by side, and their difference. PiDiNet runs
    once per picture (cached); the contrast slider only redraws."""
    import ipywidgets
    from PIL import Image

    from zsharm.teaching.figures import edge_maps
    cache = {}

    def maps_of(picture):
        key = hash(picture.tobytes()) ^ hash(picture.shape)
        if key not in cache:
            pil = Image.fromarray(picture)
            scale = long_side / max(pil.size)
            small = np.asarray(pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))))
            maps = edge_maps(small, pidinet)
            cache[key] = (small, _normalised(maps["Sobel E_S"]), _normalised(maps["PiDiNet E_D"]))
        return cache[key]

    default = np.asarray(as_array(image) * 255, dtype=np.uint8) if not isinstance(image, np.ndarray) else image

    def draw(fig, upload, contrast):
        picture = _decode_upload(upload) if upload else default
        small, sobel, pid = maps_of(picture)
        axes = fig.subplots(1, 4)
        _show(axes[0], small, "your picture" if upload else "the demo (upload yours)")
        axes[1].imshow(np.clip(sobel * contrast, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[1].set_title("Sobel E_S", fontsize=10)
        axes[2].imshow(np.clip(pid * contrast, 0, 1), cmap="gray", vmin=0, vmax=1)
        axes[2].set_title("PiDiNet E_D", fontsize=10)
        shown = axes[3].imshow(sobel - pid, cmap=DIFF_CMAP, vmin=-1, vmax=1)
        axes[3].set_title("Sobel - PiDiNet", fontsize=10)
        fig.colorbar(shown, ax=axes[3], fraction=0.046)
        for ax in axes:
            ax.axis("off")

    return Explorer(draw, {"upload": ipywidgets.FileUpload(accept="image/*", multiple=False, description="picture"),
                           "contrast": ipywidgets.FloatSlider(value=1.0, min=0.5, max=4.0, step=0.5,
                                                              description="contrast", continuous_update=False)},
                    figsize=(12, 3.4))


# ----------------------------------------------------------------------------- 06: Prompt-to-Prompt

@dataclass
class ReplacementViews:
    """Prompt-to-Prompt edits over a grid of (cross, self) replacement fractions, sharing one inversion,
    refinement and null text."""
    work_input: np.ndarray
    mask_work: np.ndarray
    source_branch: np.ndarray
    target_branch: dict    # {(cross, self): H x W x 3}
    blended: dict          # likewise, after the blend with the background


def replacement_views(pipe, result, config, crosses=(0.0, 0.5, 1.0), selfs=(0.0, 0.5, 1.0),
                      progress=False) -> ReplacementViews:
    """Run only the editing stage of an iteration (`result`, from run_iteration under `config`) once for each
    grid point: the inversion, refined embeddings and null text are shared."""
    from zsharm.edit.blending import blend
    from zsharm.edit.diffusion import Run, text_embeddings
    from zsharm.edit.prompt_to_prompt import edit_with_prompt_to_prompt
    if result.refinement is not None:
        embeddings = result.refinement.embeddings
    else:
        with torch.no_grad():
            fixed = text_embeddings(Run(pipe=pipe, config=config), "editing", [result.source, result.target])
        embeddings = [fixed] * (len(result.inversion.timesteps) - 1)
    work = np.asarray(result.work_input)
    target, blended, source = {}, {}, None
    for c in crosses:
        for s in selfs:
            run = Run(pipe=pipe, config=config.replace(cross_replace_steps=c, self_replace_steps=s),
                      progress=progress)
            with torch.no_grad():
                edit = edit_with_prompt_to_prompt(run, result.inversion, embeddings, result.nulltext.uncond)
            source = edit.images[0] if source is None else source
            target[(c, s)] = edit.images[1]
            blended[(c, s)] = blend(edit.images[1], work, result.mask_work)
    return ReplacementViews(work_input=work, mask_work=result.mask_work, source_branch=source,
                            target_branch=target, blended=blended)


def replacement_explorer(views: ReplacementViews) -> Explorer:
    """Cross- and self-replacement fractions over the precomputed grid: the target branch, the blend, and
    the difference map between the target branch and a chosen reference."""
    crosses = sorted({c for c, _ in views.target_branch})
    selfs = sorted({s for _, s in views.target_branch})
    references = ["source branch", f"the method ({crosses[-1]:g}, {selfs[-1]:g})", f"no replacement ({crosses[0]:g}, {selfs[0]:g})"]

    def draw(fig, cross, self_, against):
        key = (cross, self_)
        reference = {references[0]: views.source_branch, references[1]: views.target_branch[(crosses[-1], selfs[-1])],
                     references[2]: views.target_branch[(crosses[0], selfs[0])]}[against]
        axes = fig.subplots(1, 4)
        _show(axes[0], views.source_branch, "source branch (reconstruction)")
        _show(axes[1], views.target_branch[key], f"target branch\ncross {cross:g}, self {self_:g}")
        _show(axes[2], views.blended[key], "after the blend", views.mask_work)
        diff = np.abs(as_array(views.target_branch[key]) - as_array(reference)).mean(-1)
        shown = axes[3].imshow(diff, cmap=CMAP, vmin=0, vmax=0.5)
        axes[3].set_title(f"|target - {against.split(' (')[0]}|", fontsize=10)
        axes[3].axis("off")
        fig.colorbar(shown, ax=axes[3], fraction=0.046, label="mean abs difference")

    return Explorer(draw, {"cross": _slider(crosses, crosses[-1], "cross-replace fraction"),
                           "self_": _slider(selfs, selfs[-1], "self-replace fraction"),
                           "against": _dropdown(references, description="difference against")}, figsize=(13, 3.6))


# ----------------------------------------------------------------------------- 07: decisions

def decision_trace(scores, iterations: int = 10, candidates: int = 2):
    """The decisions the real loop (`zsharm.decide.loop.run_loop`, whose rule is `zsharm.decide.rule.decide`) makes
    on scripted scores, with a one-pixel stand-in for stage 2: the first `candidates` scores are iteration
    0's, one per description. Returns the LoopResult; scores the loop never asked for are left unused."""
    from PIL import Image

    from zsharm.describe.description import Description
    from zsharm.decide.loop import run_loop
    image = Image.new("RGB", (2, 2))
    mask = np.array([[True, False], [False, False]])
    words = "abcdefghijklmnopqrstuvwxyz"
    described = [Description.from_prompts(f"thing {words[k]}", f"thing target {words[k]}") for k in range(candidates)]
    queue = list(scores)

    def score(_out, _mask):
        return queue.pop(0) if queue else 0.0

    return run_loop(image, mask, described, lambda current, s, t: current, score, iterations=iterations,
                    progress=False)


DECISION_COLOURS = {"drop": "grey", "continue": "C0", "regenerate": "C1", "conclude": "C3", "stop": "k"}


def decision_explorer(scores, iterations: int = 10) -> Explorer:
    """A score-sequence editor: one slider per score, in the order the loop asks for them (two iteration-0
    candidates first), and the budget; the decision trace is recomputed by the loop's rule on every move."""
    import ipywidgets
    scores = list(scores)
    controls = {f"s{k}": ipywidgets.FloatSlider(value=v, min=0.0, max=1.0, step=0.01, description=f"score {k}",
                                                continuous_update=False, readout_format=".2f")
                for k, v in enumerate(scores)}
    controls["budget"] = ipywidgets.IntSlider(value=iterations, min=1, max=len(scores) - 1, description="budget",
                                              continuous_update=False)

    def draw(fig, budget, **values):
        sequence = [values[f"s{k}"] for k in range(len(scores))]
        result = decision_trace(sequence, iterations=budget)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(result.history))
        y = [r.score for r in result.history]
        ax.plot(x, y, color="lightgrey", zorder=1)
        for i, record in enumerate(result.history):
            ax.scatter([i], [record.score], s=70, color=DECISION_COLOURS[record.decision], zorder=2)
            ax.annotate(f"{record.decision}\nd{record.candidate}", (i, record.score), textcoords="offset points",
                        xytext=(0, 9), ha="center", fontsize=8)
        ax.scatter([result.best_index], [result.history[result.best_index].score], s=260, facecolors="none",
                   edgecolors="green", linewidths=2, label="best (the output)")
        unused = sequence[len(result.history):]
        later = np.arange(len(result.history), len(sequence))
        ax.scatter(later, unused, s=40, facecolors="none", edgecolors="grey", label="never asked for")
        ax.set_xticks(np.arange(len(sequence)), [f"it {r.iteration}" for r in result.history] + ["-"] * len(unused))
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("evaluator score")
        ax.set_title(f"stop: {result.stop_reason}; {len(sequence) - len(result.history)} scores unused", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)

    return Explorer(draw, controls, figsize=(11, 4))
