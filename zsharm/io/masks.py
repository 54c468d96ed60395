"""Masks: read through the one picture reader, binarised at the paper's 100/255, checked against their image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsharm.errors import ZsharmError
from zsharm.io.pictures import Picture, load_image, load_picture, picture_from_bytes, read_file_bytes, source_name


MASK_THRESHOLD = 100 / 255  # the paper binarises masks at > 100/255


def load_mask(src, size: tuple[int, int] | None = None, like: Picture | None = None) -> np.ndarray:
    """Read a foreground mask as a boolean H x W array (True = foreground), EXIF orientation applied.

    The one mask reader: every entry point (harmonize, Harmonizer, batch, evaluate, the evaluator's training
    sets) binarises a mask file through it, so one file gives one mask everywhere. Which values count: if the
    image has an alpha channel that is not constant, the alpha channel (a cut-out or a painted layer is a mask
    by its opacity); otherwise the brightest colour channel (a mask painted green or red is still a mask).
    Foreground is > 100/255 of full scale (the paper's binarisation; 16-bit scaled), except that an integer
    image holding only 0 and 1 is read as a label map (1 = foreground). Boolean arrays pass through the same
    checks. `size` (W, H), or the size of `like` (the Picture the mask belongs to), must match. Empty and
    full masks are refused: there would be nothing to harmonize, or nothing to harmonize it with.
    """
    return read_mask_once(src, size, like).foreground


@dataclass
class GivenMask:
    """A mask as read once and handed on: zsharm's boolean reading (`foreground`) and what was given, for a file
    its bytes (`data`: the evaluator decodes its soft values from them as the authors' reader does, with no
    second read) or the array itself (`values`)."""

    foreground: np.ndarray
    name: str
    data: bytes | None = None
    values: np.ndarray | None = None


def read_mask_once(src, size: tuple[int, int] | None = None, like: Picture | None = None) -> GivenMask:
    """`load_mask`, keeping what was given: a GivenMask passes through (checked again, not read again)."""
    if like is not None:
        size = like.size
    if isinstance(src, GivenMask):
        check_mask(src.foreground, size, src.name, like)
        return src
    data = values = None
    if isinstance(src, (str, os.PathLike)):
        data = read_file_bytes(Path(src), "mask")
        picture = picture_from_bytes(data, f"mask {src}", Path(src), "mask")
    else:
        picture = load_picture(src, "mask")
        values = src if isinstance(src, np.ndarray) else None
    given = GivenMask(binarise_mask(picture), source_name(src), data, values)
    check_mask(given.foreground, size, given.name, like)
    return given


def binarise_mask(picture: Picture) -> np.ndarray:
    """The foreground of a mask picture (see `load_mask`), without the checks."""
    pixels = picture.pixels
    alpha = pixels[..., -1] if picture.has_alpha else None
    if alpha is not None and alpha.min() != alpha.max():
        values = alpha
    else:
        values = pixels[..., :-1] if picture.has_alpha else pixels
        values = values.max(axis=2)
    if values.max() == 1:
        return values == 1
    return binarise_values(values, picture.max_value)


def as_foreground(values) -> np.ndarray:
    """A mask given as numbers (bool; a 0/1 label map; 8- or 16-bit values; floats in [0, 1] or 0-255) as a
    boolean H x W..., through `binarise_values`."""
    m = np.asarray(values)
    if m.dtype == bool:
        return m
    top = m.max(initial=0)
    if np.issubdtype(m.dtype, np.integer) and top == 1:
        return m == 1
    if m.dtype in (np.uint8, np.uint16):
        return binarise_values(m, np.iinfo(m.dtype).max)
    return binarise_values(m, 1.0 if top <= 1 else 255.0)


def binarise_values(values, full_scale: float = 1.0) -> np.ndarray:
    """Foreground where a value is above the paper's 100/255 of `full_scale`: the one binarisation of mask values
    (files, arrays, soft masks, the evaluator's reading, metrics, describers)."""
    return np.asarray(values) > MASK_THRESHOLD * full_scale


def check_mask(mask: np.ndarray, size: tuple[int, int] | None = None, name: str = "<array>",
               like: Picture | None = None) -> None:
    """Refuse a mask of the wrong size (W, H), or one with no foreground or no background, in one line."""
    height, width = mask.shape[:2]
    if size is not None and tuple(size) != (width, height):
        hint = ""
        if like is not None and like.orientation in (5, 6, 7, 8) and tuple(size) == (height, width):
            hint = (f": the image's EXIF orientation ({like.orientation}) turns it from {height}x{width} as stored "
                    f"to {size[0]}x{size[1]} as shown, and the mask matches the stored pixels; turn the mask "
                    f"the same way (or save the image without EXIF orientation)")
        raise ZsharmError(f"mask {name} is {width}x{height} but the image is {size[0]}x{size[1]}{hint}")
    if not mask.any():
        raise ZsharmError(f"mask {name} ({width}x{height}) has no foreground: no pixel above 100/255 in any channel")
    if mask.all():
        raise ZsharmError(f"mask {name} ({width}x{height}) has no background: every pixel is foreground")


def read_pair(image, mask) -> tuple[Picture, np.ndarray]:
    """An image and its mask, read and checked together (sizes, EXIF, empty and full masks, the mask not the
    image itself: every bright pixel of it would count as foreground); either may be one already read (a
    Picture, a GivenMask)."""
    picture, given = read_pair_once(image, mask)
    return picture, given.foreground


def read_pair_once(image, mask) -> tuple[Picture, GivenMask]:
    """`read_pair`, the mask kept as given (`read_mask_once`), to be handed on rather than read again."""
    if _same_file(image, mask):
        raise ZsharmError(f"the mask {source_name(mask)} is the composite itself: give the foreground mask "
                          f"(white = foreground)")
    picture = image if isinstance(image, Picture) else load_image(image)
    return picture, read_mask_once(mask, like=picture)


def _same_file(a, b) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
