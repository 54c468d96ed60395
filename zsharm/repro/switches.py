"""What each of the `fast` schedule's switches buys: model work, time, and how far the output moves from `paper`.

    rows = ablate("tiny-tamed", image, mask, "cat bright", "cat winter dull", size=256, steps=10)
    print(markdown(rows)); plot(rows)

Every way `HarmonizeConfig.fast()` differs from `paper()` is one switch below. Each switch gives two rows: the
paper schedule with that switch alone turned on ("paper + ..."), and the fast schedule with that switch alone
turned off ("fast - ..."). Every row is one harmonization iteration on the same composite; its output is
compared with the paper schedule's inside the mask (fPSNR, and the largest change in grey levels), its model work
is counted, its time measured. `zsharm ablate` prints the table; notebook 10 draws it.
"""

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from zsharm.config import HarmonizeConfig
from zsharm.edit.diffusion import CallCounter
from zsharm.errors import ZsharmError


@dataclass(frozen=True)
class Switch:
    name: str
    off: dict   # the paper schedule's values
    on: dict    # the fast schedule's values
    why: str


def fast_switches() -> list:
    """The switches, in the order a reader meets them in the pipeline; `off` is paper's, `on` fast's."""
    paper, fast = HarmonizeConfig.paper(), HarmonizeConfig.fast()

    def switch(name, keys, why):
        return Switch(name, {k: getattr(paper, k) for k in keys}, {k: getattr(fast, k) for k in keys}, why)

    return [
        Switch("fast arithmetic", dict(arithmetic="authors", authors_arithmetic_on_cpu=True),
               dict(arithmetic="fast", authors_arithmetic_on_cpu=False),
               "fp16 on a GPU and fused attention (SDPA) wherever no map is needed, instead of fp32 with every map "
               "materialised: the same computation, rounded differently"),
        switch(f"{fast.steps} DDIM steps", ["steps"], f"{fast.steps} instead of {paper.steps} timesteps in every stage"),
        switch("uncond-only inversion", ["inversion_batch_uncond_only"],
               "inversion runs at guidance 0, where the conditional half of the batch does not count"),
        switch("refinement maps on the inversion", ["refine_cond_only"],
               "refinement needs only the conditional rows' maps, taken on the inversion's latents (the guidance-0 "
               "trajectory retraces them) instead of a trajectory of its own"),
        switch(f"{fast.refine_iters} refinement step", ["refine_iters"],
               f"{fast.refine_iters} AdamW step per timestep instead of {paper.refine_iters}"),
        switch(f"{fast.nulltext_max_inner} null-text step", ["nulltext_max_inner", "nulltext_early_stop"],
               f"at most {fast.nulltext_max_inner} null-text step per timestep (and none once the latent error is "
               f"below {fast.nulltext_early_stop:g}) instead of i//10 + 1"),
        switch("PiDiNet gradients", ["pidinet_grad"],
               "the PiDiNet edge term also steers the gradient (the authors' adds to the loss value only)"),
        switch("edge loss on the mask's box", ["edge_crop"],
               "decode and compare edges only in the mask's bounding box, not the whole image"),
        switch("scoring in memory", ["evaluator_scoring"],
               "the evaluator scores each blend in memory, not saved as a quality-75 JPEG and re-read as the "
               "authors' loop does (stage 3 only: one iteration's picture is the same)"),
        switch("without the authors' quirks", ["sobel_input_signed", "nulltext_stale_embedding"],
               "the input's Sobel map on [0, 1] like the prediction's, and each null-text step with its own "
               "timestep's text embedding"),
    ]


@dataclass
class AblationRow:
    name: str
    changes: dict            # the switch values that differ from the row's base schedule
    seconds: float
    counts: CallCounter      # model work of the row's iteration
    fpsnr: float             # dB against the paper schedule's output, inside the mask
    max_levels: int          # largest change of a foreground value against paper's, in grey levels
    image: np.ndarray = field(repr=False, default=None)

    @property
    def identical(self) -> bool:
        return self.max_levels == 0

    @property
    def unet_images(self) -> int:
        return self.counts.total("unet_images")

    @property
    def unet_images_grad(self) -> int:
        return self.counts.total("unet_images", grad=True)


def row_configs(size: int = 512, steps: int = None, device="cpu", model_values: dict | None = None) -> list:
    """[(row name, HarmonizeConfig, changes)]: paper, paper + each switch, fast, fast - each switch.

    Both schedules' arithmetic is fixed to what it is on `device` (paper's is the authors' on CPU only), so that
    no other switch changes it; a row that would equal its base schedule is left out. `steps` (for a quick
    look) replaces both schedules' step counts, and the steps switch then has no row. `model_values`: what the
    model's own zsharm.json sets (the toy prior's map resolution), under `size` and `steps`."""
    common = {**(model_values or {}), "size": size, **({} if steps is None else {"steps": steps})}
    paper, fast = HarmonizeConfig.paper(**common), HarmonizeConfig.fast(**common)
    device = torch.device(device)
    # an explicit arithmetic makes authors_arithmetic_on_cpu moot: one value for both, so only `arithmetic` differs
    paper = paper.replace(arithmetic="authors" if paper.runs_authors_arithmetic(device) else "fast",
                          authors_arithmetic_on_cpu=False)
    fast = fast.replace(arithmetic="authors" if fast.runs_authors_arithmetic(device) else "fast",
                        authors_arithmetic_on_cpu=False)
    switches = [s for s in fast_switches() if steps is None or "steps" not in s.on]
    rows = [("paper", paper, {})]
    rows += [(f"paper + {s.name}", paper.replace(**s.on), s.on) for s in switches if paper.replace(**s.on) != paper]
    rows += [("fast", fast, {})]
    rows += [(f"fast - {s.name}", fast.replace(**s.off), s.off) for s in switches if fast.replace(**s.off) != fast]
    return rows


def ablate(model, image, mask, source: str, target: str, size: int = 512, steps: int = None, device=None,
           pidinet=None, progress: bool = True, only=None) -> list:
    """Run every row of `row_configs` once (or the rows named in `only`) and compare each with paper's output.

    model: a spec for `zsharm.models.load_pipeline`; each precision a row asks for is loaded once (on a GPU with
    a short untimed warm-up). Seconds are single runs: `zsharm bench` gives medians."""
    from zsharm.bars import bar

    from zsharm.quality.metrics import fpsnr
    from zsharm.edit.iteration import (
        at_work_size,
        iterate_at_work_size,
    )
    from zsharm.models import default_device, default_dtype, load_pipeline, model_config

    device = torch.device(device) if device else default_device()
    model_values = model_config(model)
    rows = row_configs(size, steps, device, model_values=model_values)
    if only is not None:
        unknown = set(only) - {name for name, _, _ in rows}
        if unknown:
            raise ZsharmError(f"unknown ablation row(s) {sorted(unknown)}; rows are {[n for n, _, _ in rows]}")
        rows = [r for r in rows if r[0] == "paper" or r[0] in only]
    from zsharm.io.masks import read_pair
    picture, full_mask = read_pair(image, mask)
    work_input, mask_work = at_work_size(picture, full_mask, HarmonizeConfig(size=size))
    if pidinet is None and any(config.edge_pidinet_weight > 0 for _, config, _ in rows):  # the toy prior's is 0
        from zsharm.edit.pidinet import load_pidinet
        pidinet = load_pidinet(variant="tiny", device=device)
    pipes, results, reference = {}, [], None
    for name, config, changes in bar(rows, desc="Ablation", disable=not progress):
        dtype = config.torch_dtype(device) or default_dtype(device)
        if dtype not in pipes:
            pipes[dtype] = load_pipeline(model, device=device, dtype=dtype)
            if device.type == "cuda":  # kernels are chosen and compiled on first use: keep that out of the timings
                iterate_at_work_size(pipes[dtype], work_input, mask_work, source, target,
                                     HarmonizeConfig.fast(**{**model_values, "size": size, "steps": 2,
                                                             "dtype": config.dtype}), progress=False,
                                     pidinet=pidinet)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = iterate_at_work_size(pipes[dtype], work_input, mask_work, source, target, config, progress=False,
                                   pidinet=pidinet)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        output = np.asarray(out.work_image)
        if reference is None:
            reference = output
        diff = np.abs(output.astype(int) - reference.astype(int))[mask_work]
        results.append(AblationRow(name=name, changes=changes, seconds=seconds, counts=out.counts,
                                   fpsnr=fpsnr(output, reference, mask_work), max_levels=int(diff.max()),
                                   image=output))
    return results


def markdown(rows: list) -> str:
    lines = ["| row | UNet image evaluations (with gradients) | seconds | fPSNR vs paper (dB) | largest change "
             "(levels) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        value = "identical" if r.identical else f"{r.fpsnr:.1f}"
        lines.append(f"| {r.name} | {r.unet_images} ({r.unet_images_grad}) | {r.seconds:.2f} | {value} | "
                     f"{r.max_levels} |")
    return "\n".join(lines) + "\n"


def plot(rows: list, ax=None):
    """Two bar charts side by side: model work per row, and how far its output is from paper's."""
    import matplotlib.pyplot as plt
    if ax is None:
        fig, ax = plt.subplots(1, 2, figsize=(12, 0.35 * len(rows) + 1.2), sharey=True)
    else:
        fig = ax[0].figure
    y = np.arange(len(rows))[::-1]
    names = [r.name for r in rows]
    total = np.array([r.unet_images for r in rows])
    grad = np.array([r.unet_images_grad for r in rows])
    ax[0].barh(y, total - grad, color="#9bb7d4", label="without gradients")
    ax[0].barh(y, grad, left=total - grad, color="#2f5d8a", label="with gradients")
    ax[0].set_yticks(y, names)
    ax[0].set_xlabel("UNet image evaluations per iteration")
    ax[0].legend(loc="lower right", fontsize=8)
    finite = [r.fpsnr for r in rows if not r.identical]
    top = (max(finite) if finite else 60) + 10
    ax[1].barh(y, [top if r.identical else r.fpsnr for r in rows], color="#c98b3a")
    for yi, r in zip(y, rows):
        label = "identical" if r.identical else f"{r.fpsnr:.1f} dB"
        ax[1].text(1, yi, f"{label}, {r.seconds:.1f} s", va="center", fontsize=8)
    ax[1].set_xlabel("fPSNR against paper's output (dB; higher = closer)")
    fig.tight_layout()
    return fig


def stage_work(counts) -> dict:
    """UNet image evaluations per stage: {stage: (without gradients, with gradients)}."""
    return {stage: (counts.total("unet_images", stage, grad=False), counts.total("unet_images", stage, grad=True))
            for stage in counts.per_stage("unet_images")}


def plot_stage_work(tables: dict, ax=None):
    """Stacked bars, one per schedule (name -> CallCounter table): UNet image evaluations per stage, the part
    with gradients hatched."""
    import matplotlib.pyplot as plt
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 0.6 * len(tables) + 1.2))
    stages = ("inversion", "refinement", "nulltext", "editing")
    colours = dict(inversion="#8fb8de", refinement="#e3a857", nulltext="#7bb274", editing="#c8718d")
    names = list(tables)
    for i, name in enumerate(names):
        work, left = stage_work(tables[name]), 0
        for stage in stages:
            nograd, withgrad = work.get(stage, (0, 0))
            ax.barh(i, nograd, left=left, color=colours[stage], label=stage if i == 0 else None)
            ax.barh(i, withgrad, left=left + nograd, color=colours[stage], hatch="//", edgecolor="white")
            left += nograd + withgrad
        ax.text(left + 5, i, str(left), va="center", fontsize=9)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("UNet image evaluations per iteration (hatched: with gradients)")
    ax.legend(loc="lower right", fontsize=8)
    return ax.figure
