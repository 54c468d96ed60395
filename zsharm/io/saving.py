"""Writing pictures: the format an output path names, the checks before any work, the encoders."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from zsharm.errors import ZsharmError
from zsharm.io.files import check_writable, write_atomic
from zsharm.io.pictures import MODES, Picture, picture_from_bytes


# What each output format can hold.
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP", ".bmp": "BMP"}


_HOLDS_ALPHA = {"PNG", "TIFF", "WEBP"}


_HOLDS_16BIT = {"PNG", "TIFF"}


_HOLDS_GREY_ALPHA = {"PNG", "TIFF"}


_HOLDS_GREY = {"PNG", "TIFF", "JPEG", "BMP"}


_LOSSY = {"JPEG"}  # WebP is written losslessly


def output_format(path) -> str:
    """The format an output path names by its extension (PNG, JPEG, TIFF, WEBP, BMP), or ZsharmError."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ZsharmError(f"cannot save {path}: unknown extension {path.suffix!r} "
                          f"(use .png, .tif, .webp, .bmp, or .jpg with the lossy option)")
    return fmt


def check_can_save(picture: Picture, path, *, convert: bool = False, lossy: bool = False) -> str:
    """Refuse, before any work, an output path that cannot hold `picture` without silently losing something:
    an unknown extension, a lossy format (JPEG changes background pixels) unless `lossy`, alpha or 16 bits
    the format cannot hold unless `convert`, a folder, or a place no file can be written. Returns the format."""
    path = Path(path)
    fmt = output_format(path)
    if picture.has_alpha and fmt not in _HOLDS_ALPHA and not convert:
        raise ZsharmError(f"cannot save {path}: the image has an alpha channel and {fmt} has none "
                          f"(use .png, .tif or .webp)")
    if picture.bits == 16 and fmt not in _HOLDS_16BIT and not convert:
        raise ZsharmError(f"cannot save {path}: the image has 16-bit samples and {fmt} has 8 (use .png or .tif)")
    if fmt in _LOSSY and not lossy:
        raise ZsharmError(f"cannot save {path}: {fmt} is lossy and would change background pixels that zsharm "
                          f"keeps bit for bit; use .png, .tif or .webp (or allow it: --allow-lossy)")
    check_writable(path)
    return fmt


def save_picture(picture: Picture, path, *, quality: int = 95, convert: bool = False, lossy: bool = False) -> Path:
    """Write `picture` to `path` atomically; the format comes from the extension (.png .jpg .jpeg .tif .tiff
    .webp .bmp). Parent folders are created.

    Nothing is lost silently: a lossy format (JPEG) is refused unless `lossy=True`; a format that cannot hold
    the picture's alpha (JPEG, BMP) or its 16 bits (JPEG, WebP, BMP) is refused unless `convert=True`, which
    drops alpha / rounds to 8 bits. Grey is kept as grey where the format has it (WebP stores it as RGB).
    16-bit grey + alpha is stored as 16-bit RGBA (OpenCV writes no 16-bit grey + alpha). JPEG is written at
    `quality` with no chroma subsampling (colour is what harmonization changes); WebP losslessly.
    Returns the path written.
    """
    path = Path(path)
    fmt = check_can_save(picture, path, convert=convert, lossy=lossy)
    write_atomic(path, lambda file: _encode_picture(file, picture, fmt, quality))
    return path


def encode_picture(picture: Picture, fmt: str, quality: int = 95) -> bytes:
    """The file bytes of `picture` in `fmt`, alpha dropped and 16 bits rounded where the format lacks them."""
    buffer = io.BytesIO()
    _encode_picture(buffer, picture, fmt, quality)
    return buffer.getvalue()


def _encode_picture(file, picture: Picture, fmt: str, quality: int) -> None:
    pixels, mode = picture.pixels, picture.mode
    if picture.has_alpha and fmt not in _HOLDS_ALPHA:
        pixels, mode = pixels[..., :-1], mode[:-1]
    if picture.bits == 16 and fmt not in _HOLDS_16BIT:
        pixels = ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "LA" and (fmt not in _HOLDS_GREY_ALPHA or pixels.dtype == np.uint16):
        pixels, mode = pixels[..., [0, 0, 0, 1]], "RGBA"
    if mode == "L" and fmt not in _HOLDS_GREY:
        pixels, mode = np.repeat(pixels, 3, axis=2), "RGB"
    _encode(file, np.ascontiguousarray(pixels), mode, fmt, quality, picture.icc_profile)


def lossy_background_changes(picture: Picture, mask: np.ndarray, path, quality: int = 95) -> tuple[int, int]:
    """(background pixels that writing `picture` to `path` would change, background pixels): what a lossy
    format costs, counted on the very bytes it would write."""
    fmt = output_format(path)
    written = picture_from_bytes(encode_picture(picture, fmt, quality), f"image {path}", None)
    colour = slice(0, MODES[picture.mode] - (1 if picture.has_alpha else 0))
    before = picture.pixels[..., colour]
    if picture.bits == 16:
        before = ((before.astype(np.uint32) + 128) // 257).astype(np.uint8)
    after = written.pixels[..., : before.shape[2]]
    if after.shape[2] != before.shape[2]:  # grey written as RGB
        after = written.pixels[..., :1]
    background = ~np.asarray(mask, bool)
    changed = (before != after).any(axis=2) & background
    return int(changed.sum()), int(background.sum())


def _encode(file, pixels: np.ndarray, mode: str, fmt: str, quality: int, icc: bytes | None) -> None:
    """Encode pixels (already fitted to what `fmt` holds) into an open binary file."""
    if pixels.dtype == np.uint16 and mode != "L":
        order = cv2.COLOR_RGBA2BGRA if mode == "RGBA" else cv2.COLOR_RGB2BGR
        ok, encoded = cv2.imencode(".png" if fmt == "PNG" else ".tif", cv2.cvtColor(pixels, order))
        if not ok:
            raise OSError("OpenCV could not encode the 16-bit image")
        file.write(encoded.tobytes())
        return
    if pixels.dtype == np.uint16:
        image = Image.fromarray(pixels[..., 0])  # uint16 grey becomes PIL "I;16"
    else:
        image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    options = {"icc_profile": icc} if icc else {}
    if fmt == "JPEG":
        options.update(quality=quality, subsampling=0)
    elif fmt == "WEBP":
        options.update(lossless=True, exact=True)  # exact: keep colour under fully transparent pixels
    elif fmt == "BMP":
        options = {}
    image.save(file, format=fmt, **options)
