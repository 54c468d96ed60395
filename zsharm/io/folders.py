"""Finding pictures in folders: natural name order, composites paired with their masks."""

from __future__ import annotations

import re
from pathlib import Path


# The image files every folder reader lists (batch, benchmark datasets, the evaluator's training sets).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def natural_key(text) -> tuple:
    """Sort key that orders `2.png` before `10.png` (the authors use natsort). Names natsort ranks alike
    (`x1` and `x01`, `A` and `a`) are ordered by their exact text, so the order is total: which caption line
    or mask goes with which image never depends on the order the files were created in."""
    text = str(text)
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)], text


def list_images(folder, recursive: bool = False) -> list[Path]:
    """The image files in `folder` (IMAGE_EXTENSIONS, any case; hidden files skipped), in natural order of
    their paths below it. The one folder lister of batch, the benchmark datasets and the evaluator's training."""
    folder = Path(folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    images = [p for p in found if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
              and p.is_file()]
    return sorted(images, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


MASK_SUFFIX = "_mask"


def pair_masks(composites: list[Path], masks: list[Path], by_order: bool = False) -> list[Path | None]:
    """The mask of each composite: by name (`003.png` <- `003_mask.png`, else `003.png`); when no name
    matches at all, `by_order` and the counts agree, the i-th mask in natural order (as the authors pair
    theirs). None where a composite has no mask."""
    by_name = {}
    for mask in masks:
        by_name.setdefault(mask.stem, mask)
    matched = [by_name.get(p.stem + MASK_SUFFIX) or by_name.get(p.stem) for p in composites]
    if by_order and not any(matched) and len(masks) == len(composites):
        return list(masks)
    return matched


def find_image(folder, stem: str) -> Path | None:
    """folder/stem.<an image extension, any case>, or None."""
    folder = Path(folder)
    for suffix in IMAGE_EXTENSIONS:
        for candidate in (folder / (stem + suffix), folder / (stem + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None
