"""How stage 3 scores a blend: the policy (`HarmonizeConfig.evaluator_scoring`) and the mask the evaluator sees.

An evaluator is any object with `score(image, mask) -> float in [0, 1]` (image: PIL RGB or uint8 array; mask:
bool or soft H x W). The policy decides what it is shown:
- "memory": the blend as it is in memory;
- "saved_jpeg" (the paper's): the blend saved as a quality-75 JPEG and re-read, as the authors' loop scores it;
  the loop then also goes on from the re-read JPEG when it goes back to a kept image, as theirs does.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
from PIL import Image

from zsharm.io.masks import binarise_values

SCORINGS = {
    "memory": "the blend in memory",
    "saved_jpeg": "each blend saved as a quality-75 JPEG and re-read (the authors')",
}
MASK_AGREEMENT = 0.01  # the soft reading is used when it disagrees with the boolean one on at most 1 % of pixels


def scoring(evaluator, policy: str, mask: np.ndarray) -> tuple[Callable, Callable | None]:
    """(score, reload) for the loop (zsharm.decide.loop.run_loop): `score(image, _)` asks `evaluator` about
    `image` as `policy` shows it, with `mask`; `reload(image)` is what the loop goes on from (None: the image)."""
    if policy not in SCORINGS:
        raise ValueError(f"unknown scoring {policy!r}; choose one of {sorted(SCORINGS)}")
    if policy == "memory":
        return (lambda image, _mask: evaluator.score(image, mask)), None
    from zsharm.decide.evaluator import jpeg_round_trip

    def score(image, _mask):
        return evaluator.score(jpeg_round_trip(image), mask)

    def reload(image):
        return Image.fromarray(jpeg_round_trip(image))
    return score, reload


def score_mask(given, mask: np.ndarray) -> np.ndarray:
    """What the evaluator sees of the mask: for a file, the authors' soft reading of it (first channel / 255,
    zsharm.decide.evaluator.read_mask_as_authors; from the bytes of a GivenMask, a path read here); for an array,
    its own values; `mask` (zsharm's boolean reading) where the authors' reading would show another mask (a
    cut-out whose alpha is the mask, a 0/1 label map: their reader sees colours or nothing there)."""
    from zsharm.decide.evaluator import decode_mask_as_authors, read_mask_as_authors, soft_mask
    from zsharm.io.masks import GivenMask
    soft = None
    if isinstance(given, GivenMask):
        if given.data is not None:
            soft = decode_mask_as_authors(given.data, given.name)
        given = given.values
    if soft is not None:
        pass
    elif isinstance(given, (str, os.PathLike)):
        soft = read_mask_as_authors(given)
    elif isinstance(given, np.ndarray) and given.ndim == 2:
        soft = soft_mask(given)
    else:
        return mask
    if soft.shape != mask.shape or np.mean(binarise_values(soft, 1.0) != mask) > MASK_AGREEMENT:
        return mask
    return soft

