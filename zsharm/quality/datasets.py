"""Harmonization datasets from a local folder, as a list of `Sample`s.

    samples = load_dataset("data/synthetic")          # layout detected
    composite, mask, real = samples[0].load()         # uint8 HxWx3, bool HxW, uint8 HxWx3 or None

Layouts (`layout=` or detected in this order):
- "iharmony4": iHarmony4 (Cong et al. 2020). A sub-dataset folder holds `composite_images/`, `masks/`,
  `real_images/` and `<Name>_<split>.txt` listing composites; a composite `c<id>_<maskid>_<n>.jpg` has
  the mask `masks/c<id>_<maskid>.png` and the ground truth `real_images/c<id>.jpg`. The root may hold
  several sub-dataset folders (HAdobe5k, HCOCO, HFlickr, Hday2night) and `IHD_<split>.txt`.
- "authors": the Diff-Harmonization demo folder: `composite/NNN.png`, `mask/NNN_mask.png` and
  `caption.txt`, one line per composite in natural order, candidates `src,tgt;src,tgt`.
- "realhm": RealHM (Jiang et al., SSH, ICCV 2021), laid out as its authors' evaluation reads it: for each
  `<name>_mask.jpg` (in any subfolder) the foreground photo `<name>.jpg`, the background `<name>_fore.jpg`
  and the expert-harmonized truth `<name>_gt.jpg`. The composite is the foreground photo inside the mask
  over the background outside it (`Sample.background_path`).
- "folder": `name.png` with `name_mask.png` (any image type), optional truth `name_real.png` or `name_gt.png`;
  or one `composite.png` with `mask.png` (and `real.png`), as in data/demo.

Captions (candidate descriptions, best first) come from `caption.txt` in the authors' format (one line per
composite, natural order) for "authors" and "folder", and for "iharmony4" from an optional `captions.txt`
in a sub-dataset folder, one `<composite file name><TAB>src,tgt;src,tgt` line per composite (zsharm's
synthetic set ships one; iHarmony4 itself has none).
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zsharm.describe.captions import parse_caption_pairs, read_caption_pairs
from zsharm.errors import ZsharmError
from zsharm.io.folders import find_image, list_images, natural_key, pair_masks
from zsharm.io.masks import load_mask
from zsharm.io.pictures import load_image

LAYOUTS = ("iharmony4", "authors", "realhm", "folder")


@dataclass(frozen=True)
class Sample:
    name: str
    composite_path: Path
    mask_path: Path
    real_path: Path | None = None
    captions: tuple | None = None          # ((source, target), ...) candidate descriptions, best first
    background_path: Path | None = None    # RealHM: composite_path is the foreground photo, laid over this

    def load(self):
        """(composite uint8 HxWx3, mask bool HxW, real uint8 HxWx3 or None), all one size; read by zsharm.io's
        one image and mask readers, so a mask means here what it means to `zsharm harmonize`."""
        picture = load_image(self.composite_path)
        composite = np.asarray(picture.to_pil_rgb8())
        mask = load_mask(self.mask_path, like=picture)
        if self.background_path is not None:
            background = read_rgb(self.background_path)
            _same_size(self.name, "background", composite, background)
            composite = np.where(mask[..., None], composite, background)
        real = None
        if self.real_path is not None:
            real = read_rgb(self.real_path)
            _same_size(self.name, "ground truth", composite, real)
        return composite, mask, real


def read_rgb(path) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB (EXIF orientation applied; 16-bit rounded), through zsharm.io."""
    return np.asarray(load_image(path).to_pil_rgb8())


def read_mask(path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A mask file as bool HxW through zsharm.io's one mask reader: foreground above 100/255 (the paper's
    threshold) in the alpha channel of a cut-out or the brightest colour channel, EXIF orientation applied;
    empty and full masks refused, and a size other than `size` (W, H)."""
    return load_mask(path, size=size)


def _same_size(name, what, composite, other):
    if other.shape[:2] != composite.shape[:2]:
        h, w = composite.shape[:2]
        raise ZsharmError(f"{name}: the {what} is {other.shape[1]}x{other.shape[0]}, the composite {w}x{h}")


# ----------------------------------------------------------------------------- detection

def detect_layout(root) -> str:
    """The layout of a dataset folder (see the module docstring), or ZsharmError."""
    root = Path(root)
    if not root.is_dir():
        raise ZsharmError(f"dataset folder {root} does not exist")
    if (root / "composite_images").is_dir() or any((d / "composite_images").is_dir() for d in _subdirs(root)):
        return "iharmony4"
    if (root / "composite").is_dir() and (root / "mask").is_dir():
        return "authors"
    if any(p.stem.endswith("_mask") and find_image(p.parent, p.stem[:-5] + "_fore") for p in _walk_images(root)):
        return "realhm"
    if any(p.stem.endswith("_mask") for p in list_images(root)) or (find_image(root, "composite") and find_image(root, "mask")):
        return "folder"
    raise ZsharmError(f"{root}: no known dataset layout (iHarmony4, the authors' composite/ + mask/, RealHM, "
                      "or name.png + name_mask.png)")


def _subdirs(root: Path):
    return sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name))


def _walk_images(root: Path):
    return list_images(root, recursive=True)


def load_dataset(root, layout: str = "auto", split: str = "test", limit: int | None = None) -> list:
    """Every Sample of the dataset at `root` (layout "auto" detects it), at most `limit` of them."""
    root = Path(root)
    layout = detect_layout(root) if layout == "auto" else layout
    loaders = {"iharmony4": lambda: iharmony4(root, split), "authors": lambda: authors_demo(root),
               "realhm": lambda: realhm(root), "folder": lambda: plain_folder(root)}
    if layout not in loaders:
        raise ZsharmError(f"unknown dataset layout {layout!r}; choose one of {', '.join(LAYOUTS)} or auto")
    samples = loaders[layout]()
    if not samples:
        raise ZsharmError(f"{root}: the {layout} dataset holds no images")
    return samples[:limit] if limit is not None else samples


# ----------------------------------------------------------------------------- iHarmony4

def iharmony4(root, split: str = "test") -> list:
    """iHarmony4: a sub-dataset folder, or a root of sub-dataset folders (optionally with IHD_<split>.txt)."""
    root = Path(root)
    if (root / "composite_images").is_dir():
        return _iharmony4_subset(root, split, prefix="")
    combined = root / f"IHD_{split}.txt"
    if combined.is_file():
        samples = []
        for line in _list_lines(combined):
            path = root / line
            subset = path.parent.parent
            captions = _iharmony4_captions(subset)
            samples.append(_iharmony4_sample(subset, path, subset.name + "/", captions.get(path.name)))
        return samples
    samples = []
    for subset in _subdirs(root):
        if (subset / "composite_images").is_dir():
            samples += _iharmony4_subset(subset, split, prefix=subset.name + "/")
    return samples


def _list_lines(path: Path):
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _iharmony4_subset(folder: Path, split: str, prefix: str) -> list:
    listing = folder / f"{folder.name}_{split}.txt"
    if not listing.is_file():
        others = sorted(folder.glob(f"*_{split}.txt"))
        listing = others[0] if len(others) == 1 else None
    if listing is None:  # no list: every composite in the folder
        paths = list_images(folder / "composite_images")
    else:
        paths = []
        for line in _list_lines(listing):
            direct = folder / line
            paths.append(direct if "/" in line and direct.is_file() else folder / "composite_images" / Path(line).name)
    captions = _iharmony4_captions(folder)
    return [_iharmony4_sample(folder, path, prefix, captions.get(path.name)) for path in paths]


def _iharmony4_captions(folder: Path) -> dict:
    """file name -> captions, from an optional captions.txt (`name<TAB>src,tgt;src,tgt` lines)."""
    path = folder / "captions.txt"
    if not path.is_file():
        return {}
    captions = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        name, sep, caption = line.partition("\t")
        if not sep:
            raise ZsharmError(f"{path}:{number}: expected '<composite file name><TAB>src,tgt;src,tgt'")
        captions[name.strip()] = parse_caption_pairs(caption, f"{path}:{number}")
    return captions


def _iharmony4_sample(folder: Path, path: Path, prefix: str, captions=None) -> Sample:
    if not path.is_file():
        raise ZsharmError(f"composite {path} is listed but missing")
    parts = path.stem.split("_")
    if len(parts) < 3:
        raise ZsharmError(f"{path.name}: an iHarmony4 composite is named <image>_<mask>_<n>")
    mask_stem, real_stem = "_".join(parts[:-1]), "_".join(parts[:-2])
    mask = find_image(folder / "masks", mask_stem)
    if mask is None:
        raise ZsharmError(f"{path.name}: mask masks/{mask_stem}.png is missing")
    real = None
    if (folder / "real_images").is_dir():
        real = find_image(folder / "real_images", real_stem)
        if real is None:
            raise ZsharmError(f"{path.name}: ground truth real_images/{real_stem}.jpg is missing")
    return Sample(prefix + path.stem, path, mask, real, captions)


# ----------------------------------------------------------------------------- the authors' demo folder

def authors_demo(root) -> list:
    """The Diff-Harmonization demo layout: composite/, mask/ (NNN_mask.png) and caption.txt."""
    root = Path(root)
    composites, masks = list_images(root / "composite"), list_images(root / "mask")
    paired = pair_masks(composites, masks, by_order=True)
    if not all(paired):
        if any(paired):
            missing = composites[paired.index(None)]
            raise ZsharmError(f"{missing.name}: no mask/{missing.stem}_mask.png")
        raise ZsharmError(f"{root}: {len(composites)} composites but {len(masks)} masks")
    captions = _caption_file(root / "caption.txt", len(composites))
    return [Sample(c.stem, c, m, None, cap) for c, m, cap in zip(composites, paired, captions)]


def _caption_file(path: Path, count: int) -> list:
    """The authors' caption.txt: one line per composite in natural order (None each when absent)."""
    if not path.is_file():
        return [None] * count
    lines = read_caption_pairs(path)  # the one reader of the format (batch and describe use it too)
    if len(lines) != count:
        raise ZsharmError(f"{path}: {len(lines)} caption lines for {count} composites")
    return lines


# ----------------------------------------------------------------------------- RealHM

def realhm(root) -> list:
    """RealHM: <name>.jpg (foreground photo), <name>_fore.jpg (background), <name>_mask.jpg, <name>_gt.jpg."""
    root = Path(root)
    samples = []
    for mask in _walk_images(root):
        if not mask.stem.endswith("_mask"):
            continue
        base = mask.stem[: -len("_mask")]
        background = find_image(mask.parent, base + "_fore")
        if background is None:
            continue  # not a RealHM triple
        foreground = find_image(mask.parent, base)
        if foreground is None:
            raise ZsharmError(f"{mask.parent / base}: the foreground photo {base}.jpg is missing")
        name = str((mask.parent / base).relative_to(root))
        samples.append(Sample(name, foreground, mask, find_image(mask.parent, base + "_gt"), None, background))
    return samples


# ----------------------------------------------------------------------------- name.png + name_mask.png

def plain_folder(root) -> list:
    """A folder of name.png + name_mask.png pairs (truth: name_real.png or name_gt.png, if present)."""
    root = Path(root)
    single, single_mask = find_image(root, "composite"), find_image(root, "mask")
    if single and single_mask:
        captions = _caption_file(root / "caption.txt", 1)
        return [Sample(root.name or "composite", single, single_mask, find_image(root, "real"), captions[0])]
    images = [p for p in list_images(root) if not p.stem.endswith(("_mask", "_real", "_gt"))]
    captions = _caption_file(root / "caption.txt", len(images))
    samples = []
    for image, caption in zip(images, captions):
        mask = find_image(root, image.stem + "_mask")
        if mask is None:
            raise ZsharmError(f"{image.name}: no mask {image.stem}_mask.png beside it")
        real = find_image(root, image.stem + "_real") or find_image(root, image.stem + "_gt")
        samples.append(Sample(image.stem, image, mask, real, caption))
    return samples
