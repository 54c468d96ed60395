"""figures/toy_before_after.png: held-out toy composites, what `zsharm harmonize --model toy` makes of them (all
three stages: the toy describer, the edit, the toy evaluator's loop), and the ground truth.

    python scripts/make_toy_strip.py            # about a minute per composite on one CPU thread
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["t1000000", "t1000001", "t1000002", "t1000003"]


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in NAMES:
            out = Path(tmp) / f"{name}.png"
            subprocess.run([sys.executable, "-m", "zsharm", "harmonize",
                            str(ROOT / "data/toy/composite_images" / f"{name}_1_1.png"),
                            "--mask", str(ROOT / "data/toy/masks" / f"{name}_1.png"), "--model", "toy",
                            "--out", str(out), "--quiet"], check=True)
            row = [np.asarray(Image.open(p).convert("RGB")) for p in (
                ROOT / "data/toy/composite_images" / f"{name}_1_1.png", out, ROOT / "data/toy/real_images" / f"{name}.png")]
            rows.append(np.concatenate(row, axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    canvas = Image.new("RGB", (grid.width, grid.height + 16), "white")
    canvas.paste(grid, (0, 16))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(("composite", "zsharm --model toy", "ground truth")):
        draw.text((i * grid.width // 3 + 4, 2), label, fill="black")
    canvas.save(ROOT / "figures" / "toy_before_after.png")


if __name__ == "__main__":
    main()
