"""Reading and writing pictures and masks without losing a bit.

The diffusion work happens at a small work resolution, but what zsharm hands back has the input's own size,
mode and bit depth, and its background pixels are the input's, bit for bit. So a `Picture` keeps the
original values (after EXIF orientation) and knows how to write a new foreground back into them.

Modes a `Picture` holds (`pixels` is H x W x C, uint8 or uint16):
  "L" (C=1), "LA" (C=2, grey + alpha, kept as grey + alpha so it is written back as such),
  "RGB" (C=3), "RGBA" (C=4).
Everything else is brought to one of these when read: "1" -> "L" (0/255: a harmonized foreground has grey
levels), "I;16"/"I" -> 16-bit "L", "P"/"PA" -> "RGB" or "RGBA", "CMYK"/"YCbCr"/"LAB"/"HSV" -> "RGB".
16-bit colour PNG/TIFF files, which PIL would cut to 8 bits, are read with OpenCV.
"""

from __future__ import annotations

import io
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zsharm.errors import ZsharmError, one_line

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
log = logging.getLogger("zsharm")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights PIL uses for RGB -> L
_EXIF_ORIENTATION = 0x0112
# Modes whose conversion to RGB changes the colour space, so an embedded ICC profile no longer applies.
_FOREIGN_SPACES = {"CMYK", "YCbCr", "LAB", "HSV"}


@dataclass
class Picture:
    """An image as it was read: original values, mode, and (for files) where it came from.

    `pixels` is H x W x C, uint8 or uint16, C = MODES[mode]; `icc_profile` is the embedded colour profile,
    carried to the output where the format allows.
    """

    pixels: np.ndarray
    mode: str
    path: Path | None = None
    icc_profile: bytes | None = None
    orientation: int = 1  # the file's EXIF orientation, already applied to `pixels` (1: none)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown picture mode {self.mode!r}; expected one of {sorted(MODES)}")
        if self.pixels.ndim != 3 or self.pixels.shape[2] != MODES[self.mode]:
            raise ValueError(f"mode {self.mode} needs H x W x {MODES[self.mode]} pixels, "
                             f"got {self.pixels.shape}")
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"pixels must be uint8 or uint16, got {self.pixels.dtype}")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as PIL's `Image.size`."""
        return self.pixels.shape[1], self.pixels.shape[0]

    @property
    def bits(self) -> int:
        """Bits per sample: 8 or 16."""
        return 8 if self.pixels.dtype == np.uint8 else 16

    @property
    def max_value(self) -> int:
        return 255 if self.bits == 8 else 65535

    @property
    def has_alpha(self) -> bool:
        return self.mode in ("LA", "RGBA")

    def rgb(self) -> np.ndarray:
        """Colour as float32 H x W x 3 in [0, 1]: grey replicated, alpha ignored (only colour is harmonized)."""
        colour = self.pixels[..., :1] if self.mode in ("L", "LA") else self.pixels[..., :3]
        colour = colour.astype(np.float32) / np.float32(self.max_value)
        return np.ascontiguousarray(np.broadcast_to(colour, colour.shape[:2] + (3,)))

    def to_pil_rgb8(self) -> Image.Image:
        """An 8-bit RGB PIL image: for an 8-bit file exactly `Image.open(file).convert("RGB")` (after EXIF
        orientation); 16-bit values are rounded to 8 bits."""
        colour = self.pixels[..., :1] if self.mode in ("L", "LA") else self.pixels[..., :3]
        if self.bits == 16:
            # round(v / 257): 257 is odd, so v / 257 never lies halfway and the floor below rounds exactly
            colour = ((colour.astype(np.uint32) + 128) // 257).astype(np.uint8)
        colour = np.broadcast_to(colour, colour.shape[:2] + (3,))
        return Image.fromarray(np.ascontiguousarray(colour), "RGB")

    def replace_foreground(self, rgb01: np.ndarray, mask: np.ndarray) -> Picture:
        """A new Picture whose pixels inside `mask` come from `rgb01` and whose other pixels are these, bit for bit.

        `rgb01` is float H x W x 3 in [0, 1] (values outside are clipped); it is brought to this picture's
        mode and depth: grey through ITU-R 601 luma (as PIL's "L"), alpha kept from this picture, rounded.
        """
        height, width = self.pixels.shape[:2]
        rgb01 = np.asarray(rgb01)
        mask = np.asarray(mask)
        if rgb01.shape != (height, width, 3):
            raise ZsharmError(f"new foreground is {rgb01.shape}, expected {(height, width, 3)}")
        if mask.shape != (height, width):
            raise ZsharmError(f"mask is {mask.shape}, expected {(height, width)}")
        mask = mask.astype(bool)
        values = rgb01[mask].astype(np.float64)
        if not np.isfinite(values).all():
            raise ZsharmError("the new foreground holds NaN or infinite values")
        values = np.clip(values, 0.0, 1.0) * self.max_value
        if self.mode in ("L", "LA"):
            values = values @ np.array(LUMA)[:, None]
        values = np.floor(values + 0.5).clip(0, self.max_value).astype(self.pixels.dtype)
        pixels = self.pixels.copy()
        colour_channels = values.shape[1]
        pixels[mask, :colour_channels] = values  # alpha (the channel after the colour ones) stays as it was
        return Picture(pixels, self.mode, None, self.icc_profile, self.orientation)


def load_image(src) -> Picture:
    """Read a picture from a path, a PIL image or a numpy array, EXIF orientation applied.

    Arrays: H x W or H x W x C (C = 1, 2, 3, 4 for L, LA, RGB, RGBA); uint8, uint16, bool, other integers
    in 0..65535, or floats in [0, 1]. Floats are kept at 8 bits when they are exact multiples of 1/255
    (an 8-bit image made float), else at 16 bits.
    """
    return load_picture(src, "image")


def work_size(size_wh: tuple[int, int], long_side: int = 512, multiple: int = 64) -> tuple[int, int]:
    """(w, h) with the aspect of `size_wh`, the long side `long_side` (rounded to a multiple of `multiple`) and
    both sides multiples of `multiple`, at least `multiple`."""
    width, height = (int(v) for v in size_wh)
    if width <= 0 or height <= 0 or long_side <= 0 or multiple <= 0:
        raise ZsharmError(f"work_size needs positive sizes, got size {size_wh}, long side {long_side}, "
                          f"multiple {multiple}")
    long_out = max(multiple, round(long_side / multiple) * multiple)
    short_out = max(multiple, round(min(width, height) * long_out / max(width, height) / multiple) * multiple)
    return (long_out, short_out) if width >= height else (short_out, long_out)


# ---------------------------------------------------------------- reading


def source_name(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "<PIL image>" if isinstance(src, Image.Image) else "<array>"


def load_picture(src, what: str) -> Picture:
    if isinstance(src, np.ndarray):
        return _from_array(src, f"{what} <array>")
    if isinstance(src, Image.Image):
        try:
            image = ImageOps.exif_transpose(src)
        except Exception as error:  # a damaged EXIF block is the user's file, not our bug
            raise ZsharmError(f"cannot read {what} <PIL image>: {one_line(error)}") from None
        return _from_pil(image, f"{what} <PIL image>", None)
    if not isinstance(src, (str, os.PathLike)):
        raise ZsharmError(f"cannot read {what} from a {type(src).__name__!r} object: "
                          f"give a path, a PIL image or an array")
    path = Path(src)
    return picture_from_bytes(read_file_bytes(path, what), f"{what} {path}", path, what)


def read_file_bytes(path: Path, what: str) -> bytes:
    """A picture file's bytes, read once (every decoder of it works from these), or one line saying why not."""
    label = f"{what} {path}"
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ZsharmError(f"cannot read {label}: no such file") from None
    except IsADirectoryError:
        raise ZsharmError(f"cannot read {label}: it is a folder") from None
    except OSError as error:
        raise ZsharmError(f"cannot read {label}: {error.strerror or one_line(error)}") from None
    if not data:
        raise ZsharmError(f"cannot read {label}: the file is empty")
    return data


# PIL refuses a PNG chunk that unpacks to more than 1 MB (a guard against zip bombs), which also refuses the
# legal multi-megabyte ICC profiles of some cameras and printers; large enough for them, still a bound
PNG_CHUNK_LIMIT = 32 * 1024 * 1024


@contextmanager
def _png_chunks_up_to(limit: int):
    from PIL import PngImagePlugin
    before = PngImagePlugin.MAX_TEXT_CHUNK
    PngImagePlugin.MAX_TEXT_CHUNK = max(before, limit)
    try:
        yield
    finally:
        PngImagePlugin.MAX_TEXT_CHUNK = before


def picture_from_bytes(data: bytes, label: str, path: Path | None, what: str = "image") -> Picture:
    try:
        with _png_chunks_up_to(PNG_CHUNK_LIMIT):
            image = Image.open(io.BytesIO(data))
            image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation not in range(1, 9):
            orientation = 1
        if getattr(image, "n_frames", 1) > 1:
            log.warning(f"{label} has {image.n_frames} frames ({image.format}); only the first is used")
        if what == "image" and (image.mode == "F" or image.mode.startswith("I;32F")):
            raise ZsharmError(f"cannot read {label}: it holds 32-bit float samples, and zsharm keeps an image's "
                              f"depth only for 8- and 16-bit integers; convert it to 16-bit first")
        if _is_16bit_colour(image, data):
            pixels, mode = _decode_16bit_colour(data, image.mode, label)
            return Picture(_orient(pixels, orientation), mode, path, image.info.get("icc_profile"), orientation)
        image = ImageOps.exif_transpose(image)
    except ZsharmError:
        raise
    except UnidentifiedImageError:
        raise ZsharmError(f"cannot read {label}: not an image file, or one in a format PIL cannot read") from None
    except Exception as error:  # PIL reports bad files with many exception types
        raise ZsharmError(f"cannot read {label}: {one_line(error)}") from None
    picture = _from_pil(image, label, path)
    picture.orientation = orientation
    return picture


def _is_16bit_colour(image: Image.Image, data: bytes) -> bool:
    """True for the 16-bit colour (or grey + alpha) files that PIL would cut to 8 bits."""
    if image.format == "PNG" and data[12:16] == b"IHDR":
        bit_depth, colour_type = data[24], data[25]
        return bit_depth == 16 and colour_type in (2, 4, 6)
    if image.format == "TIFF" and image.mode in ("RGB", "RGBA", "RGBX", "LA"):
        bits = image.tag_v2.get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _decode_16bit_colour(data: bytes, pil_mode: str, label: str) -> tuple[np.ndarray, str]:
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ZsharmError(f"cannot read {label}: OpenCV could not decode the 16-bit image")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ZsharmError(f"cannot read {label}: unsupported sample type {pixels.dtype}")
    if pixels.ndim == 2:
        return pixels[..., None], "L"
    grey_alpha = pil_mode == "LA" or _grey_alpha_png(data)
    if pixels.shape[2] == 4 and grey_alpha:
        return np.ascontiguousarray(pixels[..., [0, 3]]), "LA"  # OpenCV hands grey + alpha over as BGRA
    if pixels.shape[2] == 4:
        return cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA), "RGBA"
    if pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB), "RGB"
    raise ZsharmError(f"cannot read {label}: unsupported channel count {pixels.shape[2]}")


def _grey_alpha_png(data: bytes) -> bool:
    return data[12:16] == b"IHDR" and data[25] == 4


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation to an H x W x C array the way PIL's `ImageOps.exif_transpose` does."""
    turn = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }.get(orientation)
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


def _from_pil(image: Image.Image, label: str, path: Path | None) -> Picture:
    source_mode = image.mode
    icc = None if source_mode in _FOREIGN_SPACES else image.info.get("icc_profile")
    if source_mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(image)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ZsharmError(f"cannot read {label}: integer samples outside 0..65535")
        return Picture(values.astype(np.uint16)[..., None], "L", path, icc)
    if source_mode == "F":
        return _from_array(np.asarray(image), label, path)
    target = {"1": "L", "L": "L", "LA": "LA", "La": "LA", "RGB": "RGB", "RGBX": "RGB", "RGBA": "RGBA",
              "RGBa": "RGBA", "PA": "RGBA"}.get(source_mode)
    if source_mode == "P":
        target = "RGBA" if "transparency" in image.info else "RGB"
    try:
        if target is None:
            target = "RGB"
        if image.mode != target:
            image = image.convert(target)
    except Exception as error:
        reason = one_line(error)
        raise ZsharmError(f"cannot read {label}: mode {source_mode} cannot be converted ({reason})") from None
    pixels = np.asarray(image)
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return Picture(np.ascontiguousarray(pixels), target, path, icc)


def _from_array(array: np.ndarray, label: str, path: Path | None = None) -> Picture:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ZsharmError(f"cannot read {label}: expected H x W or H x W x C with C in 1..4, got {array.shape}")
    if array.size == 0:
        raise ZsharmError(f"cannot read {label}: it is empty ({array.shape})")
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    if array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif array.dtype in (np.uint8, np.uint16):
        pixels = array.copy()
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise ZsharmError(f"cannot read {label}: integer values {low}..{high} outside 0..65535")
        pixels = array.astype(np.uint8 if high <= 255 else np.uint16)
    elif np.issubdtype(array.dtype, np.floating):
        pixels = _quantise_float(array.astype(np.float64), label)
    else:
        raise ZsharmError(f"cannot read {label}: unsupported dtype {array.dtype}")
    return Picture(np.ascontiguousarray(pixels), mode, path)


def _quantise_float(array: np.ndarray, label: str) -> np.ndarray:
    if not np.isfinite(array).all():
        raise ZsharmError(f"cannot read {label}: it holds NaN or infinite values")
    low, high = array.min(), array.max()
    if low < -1e-6 or high > 1 + 1e-6:
        raise ZsharmError(f"cannot read {label}: float values {low:.4g}..{high:.4g} outside [0, 1]")
    array = np.clip(array, 0.0, 1.0)
    eight = np.floor(array * 255 + 0.5)
    if np.abs(array * 255 - eight).max() < 1e-3:
        return eight.astype(np.uint8)
    return np.floor(array * 65535 + 0.5).astype(np.uint16)
