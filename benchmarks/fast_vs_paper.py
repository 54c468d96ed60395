"""How far the `fast` schedule's output moves from `paper`'s, on the reference fixture (issue 7/8).

The paper output is the authors' own (golden `blend`; zsharm's `paper` reproduces it to one grey level). Each
row switches one of fast's choices on top of the paper schedule, then the whole fast schedule, and reports the
foreground PSNR against the paper output plus UNet image evaluations and CPU seconds.

    python benchmarks/fast_vs_paper.py [--reference ../shared/reference] [--case golden_strong_cat10] [--out FILE]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from zsharm.config import HarmonizeConfig
from zsharm.harmonize import run_iteration
from zsharm.io import load_mask
from zsharm.metrics import fpsnr
from zsharm.models import load_pipeline

SWITCHES = [
    ("paper (zsharm)", {}),
    ("+ fused attention", dict(fused_attention=True)),
    ("+ uncond-only inversion", dict(inversion_batch_uncond_only=True)),
    ("+ cond-only refinement on inversion latents", dict(refine_cond_only=True)),
    ("+ 1 refinement step per timestep", dict(refine_iters=1)),
    ("+ PiDiNet gradients", dict(pidinet_grad=True)),
    ("+ edge loss on the mask's box", dict(edge_crop=True)),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference", default=str(Path(__file__).resolve().parents[2] / "shared" / "reference"))
    parser.add_argument("--case", default="golden_strong_cat10")
    parser.add_argument("--out")
    parser.add_argument("--rows", default="all", help="comma list of row numbers to run (default: all)")
    args = parser.parse_args()
    ref = Path(args.reference)
    model = "tiny_sd2_strong" if "strong" in args.case else "tiny_sd2"
    os.environ.setdefault("ZSHARM_PIDINET_WEIGHTS", str(ref.parent / "weights" / "pidinet"))
    pipe = load_pipeline(str(ref / model), device="cpu", dtype=torch.float32)
    paper_out = np.load(ref / args.case / "arrays.npz")["blend"]
    mask = load_mask(ref / "inputs" / "mask.png", size=(512, 512))
    rows = []
    configs = [(name, HarmonizeConfig.paper(steps=10, **kw)) for name, kw in SWITCHES]
    configs += [("fast, 10 steps", HarmonizeConfig.fast(steps=10, dtype="fp32")),
                ("fast (20 steps)", HarmonizeConfig.fast(dtype="fp32"))]
    if args.rows != "all":
        configs = [configs[int(i)] for i in args.rows.split(",")]
    for name, cfg in configs:
        start = time.perf_counter()
        res = run_iteration(pipe, ref / "inputs" / "composite.png", ref / "inputs" / "mask.png", "cat bright",
                            "cat winter dull", cfg, progress=False)
        seconds = time.perf_counter() - start
        images = sum(v for k, v in res.counts.items() if "/unet_images/" in k)
        grads = sum(v for k, v in res.counts.items() if "/unet_images/grad" in k)
        value = fpsnr(np.asarray(res.image), paper_out, mask)
        rows.append(f"| {name} | {value:.1f} | {images} ({grads} with gradients) | {seconds:.0f} |")
        print(rows[-1], flush=True)
    table = "\n".join([f"Foreground PSNR against the authors' output ({args.case}, 512x512, CPU, fp32)", "",
                       "| schedule | fPSNR vs paper (dB) | UNet image evaluations | CPU seconds |",
                       "|---|---:|---:|---:|", *rows, ""])
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
