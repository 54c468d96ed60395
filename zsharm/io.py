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

import glob
import io
import json
import logging
import os
import re
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zsharm.errors import ZsharmError, one_line

MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
# The image files every folder reader lists (batch, benchmark datasets, the evaluator's training sets).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
log = logging.getLogger("zsharm")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601, the weights PIL uses for RGB -> L
MASK_THRESHOLD = 100 / 255  # the paper binarises masks at > 100/255
_EXIF_ORIENTATION = 0x0112
# Modes whose conversion to RGB changes the colour space, so an embedded ICC profile no longer applies.
_FOREIGN_SPACES = {"CMYK", "YCbCr", "LAB", "HSV"}
# What each output format can hold.
_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
            ".webp": "WEBP", ".bmp": "BMP"}
_HOLDS_ALPHA = {"PNG", "TIFF", "WEBP"}
_HOLDS_16BIT = {"PNG", "TIFF"}
_HOLDS_GREY_ALPHA = {"PNG", "TIFF"}
_HOLDS_GREY = {"PNG", "TIFF", "JPEG", "BMP"}
_LOSSY = {"JPEG"}  # WebP is written losslessly


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
    return _load(src, "image")


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
    picture = _load(src, "mask")
    mask = binarise_mask(picture)
    if like is not None:
        size = like.size
    check_mask(mask, size, _name(src), like)
    return mask


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
    return values > MASK_THRESHOLD * picture.max_value


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
    """An image and its mask, read and checked together (sizes, EXIF, empty and full masks)."""
    picture = image if isinstance(image, Picture) else load_image(image)
    return picture, load_mask(mask, like=picture)


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


def check_writable(path) -> None:
    """Refuse, before any work, a path that is a folder or lies where no file can be created."""
    path = Path(path)
    if path.is_dir():
        raise ZsharmError(f"cannot save {path}: it is a folder")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ZsharmError(f"cannot save {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ZsharmError(f"cannot save {path}: no permission to write in {parent}")


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
    _write_atomic(path, lambda file: _encode_picture(file, picture, fmt, quality))
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
    written = _load_bytes(encode_picture(picture, fmt, quality), f"image {path}", None)
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


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (same suffix, so writers infer the format); move it into place
    when the block succeeds, remove it on every other exit (an error, Ctrl-C, a closed generator). Nothing
    half-written is ever left under `path`; temporary files of processes that died (SIGKILL) are swept."""
    path = Path(path)
    if path.is_dir():
        raise ZsharmError(f"cannot save {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        reason = error.strerror or one_line(error)
        raise ZsharmError(f"cannot save {path}: cannot create its folder ({reason})") from None
    _sweep_stale(path)
    temp = path.with_name(f".{path.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (POSIX; elsewhere always True, so nothing of a live process is swept)."""
    if os.name != "posix":
        return True  # Windows' os.kill(pid, 0) would end the process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temp_owner(name: str) -> int | None:
    """The process id in a temporary name zsharm made (`.x.<pid>-<hex>.tmp.png`, `x.tmp<pid>`), else None."""
    match = re.search(r"\.(\d+)-[0-9a-f]{8}\.tmp|\.tmp(\d+)$", name)
    return int(match[1] or match[2]) if match else None


def _sweep_stale(path: Path) -> None:
    for temp in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"):
        pid = temp_owner(temp.name)
        if pid is not None and pid != os.getpid() and not process_alive(pid):
            temp.unlink(missing_ok=True)


def write_bytes_atomic(path, data: bytes) -> None:
    """Write `data` to `path` atomically (a temp file beside it, then a rename)."""
    _write_atomic(Path(path), lambda file: file.write(data))


def write_json(path, data) -> None:
    """Write `data` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode("utf-8"))


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


# ---------------------------------------------------------------- folders


def natural_key(text) -> list:
    """Sort key that orders `2.png` before `10.png` (the authors use natsort)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


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


# ---------------------------------------------------------------- reading


def _name(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return "<PIL image>" if isinstance(src, Image.Image) else "<array>"


def _load(src, what: str) -> Picture:
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
    label = f"{what} {path}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ZsharmError(f"cannot read {label}: no such file") from None
    except IsADirectoryError:
        raise ZsharmError(f"cannot read {label}: it is a folder") from None
    except OSError as error:
        raise ZsharmError(f"cannot read {label}: {error.strerror or one_line(error)}") from None
    if not data:
        raise ZsharmError(f"cannot read {label}: the file is empty")
    return _load_bytes(data, label, path, what)


def _load_bytes(data: bytes, label: str, path: Path | None, what: str = "image") -> Picture:
    try:
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




# ---------------------------------------------------------------- writing


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


def _write_atomic(path: Path, write) -> None:
    """Run `write(file)` on a temp file beside `path`, then move it into place (see `atomic_path`); an
    OSError becomes one line."""
    try:
        with atomic_path(path) as temp:
            # os.open with 0o666 lets the umask set the permissions, as for any ordinary new file
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
                write(file)
                file.flush()
                os.fsync(file.fileno())
    except ZsharmError:
        raise
    except Exception as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
        raise ZsharmError(f"cannot save {path}: {reason}") from None
