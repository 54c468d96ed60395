"""`zsharm evaluate`: run harmonization methods over a dataset and measure them against ground truth.

    zsharm evaluate data/synthetic --methods copy-paste,reinhard,histogram,poisson,zsharm --out runs/synthetic

writes, as PCT-Net publishes its results:
- per_image.csv   one row per (image, method): name, method, mse, fmse, psnr, fpsnr, ssim, seconds
                  (the metric cells are empty where the dataset has no ground truth);
- summary.csv     per method: images, images with ground truth, the metric means, mean seconds;
- summary.md      the same as a markdown table;
- images/<method>/<name>.png with --save-images (e.g. to feed zsharm.quality.userstudy).

Metrics are taken at the images' own resolution (zsharm.quality.metrics). The methods are functions handed in
by the caller: the baselines of zsharm.quality.baselines, and zsharm itself, built by the command from
zsharm.harmonizer.zsharm_method (this package sits below the harmonizer and never imports it).
"""

import csv
import io
import math
import time
from pathlib import Path

import numpy as np

from zsharm.errors import ZsharmError
from zsharm.io.files import write_bytes_atomic
from zsharm.quality.baselines import BASELINES
from zsharm.quality.metrics import measure

METRIC_NAMES = ("mse", "fmse", "psnr", "fpsnr", "ssim", "fedge")
# zsharm and its ablations, by name: the config changes each makes to the one `evaluate` is given
ZSHARM_VARIANTS = {
    "zsharm": {},
    "zsharm-paper": {"schedule": "paper"},
    "zsharm-no-edges": {"use_edges": False},
    "zsharm-no-self-replace": {"self_replace_steps": 0.0},
    "zsharm-no-refinement": {"refine": False},
}
COLUMNS = ("name", "method") + METRIC_NAMES + ("seconds",)


def evaluate(samples, methods: dict, out_dir=None, save_images: bool = False, progress: bool = True,
             config=None) -> list:
    """Run every method on every sample; rows of per-image results (dicts with COLUMNS).

    `methods` maps a name to `f(composite, mask)` or, for methods that read captions, `f(composite, mask,
    sample)` (marked by an attribute `wants_sample`). With `out_dir`, writes per_image.csv, summary.csv and
    summary.md there (and images/<method>/<name>.png when `save_images`), and config.json, the configuration
    (`config.to_dict()`) the zsharm method ran with, when `config` is given.
    """
    from zsharm import bars

    rows = []
    out_dir = Path(out_dir) if out_dir is not None else None
    bar = bars.bar(total=len(samples) * len(methods), desc="evaluate", disable=not progress)
    for sample in samples:
        composite, mask, real = sample.load()
        if not mask.any():
            raise ZsharmError(f"{sample.name}: the mask is empty")
        for name, method in methods.items():
            start = time.perf_counter()
            result = method(composite, mask, sample) if getattr(method, "wants_sample", False) else method(composite, mask)
            seconds = time.perf_counter() - start
            result = np.asarray(result)
            if result.shape != composite.shape:
                raise ZsharmError(f"{name} returned shape {result.shape} for {sample.name} ({composite.shape})")
            row = {"name": sample.name, "method": name, "seconds": seconds}
            row.update(measure(result, real, mask) if real is not None else {k: None for k in METRIC_NAMES})
            rows.append(row)
            if save_images and out_dir is not None:
                _save_png(result, out_dir / "images" / name / (sample.name.replace("/", "__") + ".png"))
            bar.update(1)
    bar.close()
    if out_dir is not None:
        write_reports(rows, out_dir)
        if config is not None:
            from zsharm.io.files import write_json
            write_json(out_dir / "config.json", config.to_dict())
    return rows


def summarize(rows) -> list:
    """Per method (in first-seen order): images, with_truth, mean of each metric over images with truth,
    and mean seconds."""
    order = list(dict.fromkeys(r["method"] for r in rows))
    summary = []
    for method in order:
        mine = [r for r in rows if r["method"] == method]
        measured = [r for r in mine if r["mse"] is not None]
        entry = {"method": method, "images": len(mine), "with_truth": len(measured)}
        for key in METRIC_NAMES:  # rows written before a metric existed lack it
            values = [r[key] for r in measured if r.get(key) is not None]
            entry[key] = float(np.mean(values)) if values else None
        entry["seconds"] = float(np.mean([r["seconds"] for r in mine]))
        summary.append(entry)
    return summary


def markdown_table(summary) -> str:
    """The summary as a markdown table (MSE / fMSE lower is better, PSNR / fPSNR / SSIM higher)."""
    head = ["method", "images", "MSE ↓", "fMSE ↓", "PSNR ↑", "fPSNR ↑", "SSIM ↑", "fEdge ↓", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for s in summary:
        cells = [s["method"], f"{s['with_truth']}/{s['images']}"]
        cells += [_fmt(s[k], 2) for k in ("mse", "fmse", "psnr", "fpsnr")] + [_fmt(s["ssim"], 4)]
        cells += [_fmt(s.get("fedge"), 3), _fmt(s["seconds"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, digits):
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def write_reports(rows, out_dir):
    """per_image.csv, summary.csv and summary.md in `out_dir`, each written whole or not at all."""
    out_dir = Path(out_dir)
    summary = summarize(rows)
    _write_csv(out_dir / "per_image.csv", COLUMNS, rows)
    _write_csv(out_dir / "summary.csv", ("method", "images", "with_truth") + METRIC_NAMES + ("seconds",), summary)
    _write_text(out_dir / "summary.md", markdown_table(summary))


def read_rows(path) -> list:
    """per_image.csv back as rows (metrics as floats, empty cells as None)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in METRIC_NAMES + ("seconds",):
            row[key] = float(row[key]) if row[key] not in ("", None) else None
    return rows


def _write_csv(path, columns, rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _cell(row[k])) for k in columns})
    _write_text(path, buffer.getvalue())


def _cell(value):
    return f"{value:.6g}" if isinstance(value, float) else value


def _write_text(path, text):
    write_bytes_atomic(Path(path), text.encode("utf-8"))


def _save_png(array, path: Path):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def parse_methods(text: str) -> list:
    names = [m.strip() for m in text.split(",") if m.strip()]
    known = list(BASELINES) + list(ZSHARM_VARIANTS)
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise ZsharmError(f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ZsharmError(f"a method is named twice in --methods {text!r}")
    return names
