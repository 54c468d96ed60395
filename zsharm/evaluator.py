"""Stage 3: the evaluator, a two-class classifier that scores how harmonious an image looks.

The authors' network (their `HarmonizationDetect`): a ResNet-50 whose first convolution takes 4 channels
(RGB, then the foreground mask), global average pooling and a 2048 -> 2 linear layer. Input: the image
resized to 256x256 (bilinear, as cv2/albumentations), normalised with mean 0.5 and std 0.5; the mask resized
the same way with values in [0, 1], not normalised. The score is the softmax probability of class 1
("harmonious"). `HarmonyClassifier` is written here without torchvision, with the parameter names of their
checkpoint, so `bestModel.pth` loads unchanged:

    inp_encoder.weight                4 -> 64, 7x7, stride 2 (their replacement of conv1)
    encoder.0.*                       bn1
    encoder.1, encoder.2              relu, maxpool (no parameters)
    encoder.3.* .. encoder.6.*        layer1 .. layer4 (torchvision Bottleneck blocks: 3, 4, 6, 3)
    classify_fc.weight / .bias        2048 -> 2

(They build `encoder` as `children()[1:-2]` of a `pretrainedmodels` ResNet-50, which lists conv1, bn1, relu,
maxpool, layer1-4, avgpool, last_linear: seven modules, numbered 0-6.)

The authors did not publish how they trained it; `zsharm train-evaluator` trains one on iHarmony4 or on
composites made on the fly from any photos and masks.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from zsharm.errors import ZsharmError
from zsharm.io import atomic_path, write_json

SIZE = 256  # the authors' input size
# name -> (bottleneck blocks per stage, stem width); the final feature size is width * 8 * 4
ARCHS = {
    "resnet50": ((3, 4, 6, 3), 64),  # the authors'
    "small": ((1, 1, 1, 1), 32),
    "tiny": ((1, 1, 1, 1), 8),       # for tests: trains in seconds on a CPU
}
EXPANSION = 4
FIRST_STAGE = 3  # encoder.3 is layer1

# The authors' checkpoint. Their code loads `pretrained/bestModel.pth`, but neither their README nor their
# repository (as far as we could find) links the file; set ZSHARM_EVALUATOR_URL to where you got it, or put it
# at `<cache>/evaluator/bestModel.pth` (cache: $ZSHARM_CACHE, else $XDG_CACHE_HOME/zsharm, else ~/.cache/zsharm).
AUTHORS_URL = None
AUTHORS_SHA256 = None
AUTHORS_FILE = "bestModel.pth"

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
MASK_THRESHOLD = 100 / 255  # the paper binarises masks at > 100/255


# ---------------------------------------------------------------- the network


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution), same parameter names."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class HarmonyClassifier(nn.Module):
    """The authors' evaluator network: image (B,3,H,W, normalised) + mask (B,1,H,W in [0,1]) -> 2 logits.

    The defaults are their ResNet-50; `layers` and `width` give smaller variants with the same key layout.
    """

    def __init__(self, layers=(3, 4, 6, 3), width: int = 64, num_classes: int = 2):
        super().__init__()
        self.layers, self.width = tuple(int(n) for n in layers), int(width)
        self.inp_encoder = nn.Conv2d(4, width, 7, stride=2, padding=3, bias=False)
        stages, channels = [], width
        for i, blocks in enumerate(self.layers):
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(channels, width * 2**i, stride=2 if (i > 0 and j == 0) else 1))
                channels = width * 2**i * EXPANSION
            stages.append(nn.Sequential(*stage))
        self.encoder = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                     nn.MaxPool2d(3, stride=2, padding=1), *stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classify_fc = nn.Linear(channels, num_classes)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @classmethod
    def from_arch(cls, arch: str) -> "HarmonyClassifier":
        if arch not in ARCHS:
            raise ZsharmError(f"unknown evaluator arch {arch!r}; choose one of {', '.join(ARCHS)}")
        layers, width = ARCHS[arch]
        return cls(layers, width)

    @classmethod
    def from_state_dict(cls, state: dict) -> "HarmonyClassifier":
        """A classifier shaped for `state` (depths and width read from its keys), with `state` loaded."""
        if "inp_encoder.weight" not in state or "classify_fc.weight" not in state:
            raise ZsharmError("not an evaluator checkpoint: no inp_encoder.weight / classify_fc.weight "
                              f"(first keys: {', '.join(list(state)[:3])})")
        stem = state["inp_encoder.weight"]
        if stem.ndim != 4 or stem.shape[1] != 4:
            raise ZsharmError(f"evaluator checkpoint: inp_encoder.weight is {tuple(stem.shape)}, expected (W, 4, 7, 7)")
        layers = []
        for stage in range(FIRST_STAGE, FIRST_STAGE + 4):
            blocks = {int(m[1]) for k in state if (m := re.match(rf"encoder\.{stage}\.(\d+)\.", k))}
            layers.append(max(blocks) + 1 if blocks else 0)
        if min(layers) < 1:
            raise ZsharmError(f"evaluator checkpoint: encoder.3-6 must each hold blocks, found {layers}")
        model = cls(layers, stem.shape[0], state["classify_fc.weight"].shape[0])
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise ZsharmError(f"evaluator checkpoint does not fit the network: {_one_line(error)}") from None
        return model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, mask], dim=1)  # RGB then mask, as the authors concatenate
        x = self.encoder(self.inp_encoder(x))
        return self.classify_fc(torch.flatten(self.avgpool(x), 1))


def preprocess(image, mask, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' input: (3,S,S) image in [-1,1] and (1,S,S) mask in [0,1], both resized bilinearly.

    image: PIL image or uint8 H x W x 3 RGB array; mask: bool or float in [0,1], H x W, same size.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    mask = np.asarray(mask)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ZsharmError(f"the evaluator needs an 8-bit RGB image, got {rgb.dtype} {rgb.shape}")
    if mask.shape != rgb.shape[:2]:
        raise ZsharmError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is {rgb.shape[1]}x{rgb.shape[0]}")
    mask = mask.astype(np.float32)
    if mask.max(initial=0) > 1:  # an 8-bit mask image
        mask = mask / 255
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    return x, torch.from_numpy(mask)[None]


class Evaluator:
    """A loaded classifier: `score(image, mask)` is the probability that `image` is harmonious."""

    def __init__(self, model: HarmonyClassifier, device=None, size: int = SIZE, name: str = ""):
        self.device = _device(device)
        self.model = _to_device(model, self.device).eval()
        self.size = int(size)
        self.name = name

    @torch.no_grad()
    def score(self, image, mask) -> float:
        """Probability of the harmonious class, in [0, 1]. image: PIL RGB; mask: bool H x W (same size)."""
        if isinstance(image, Image.Image) and np.asarray(mask).shape != (image.size[1], image.size[0]):
            raise ZsharmError(f"mask is {np.asarray(mask).shape[::-1]} (W, H) but the image is {image.size}")
        x, m = preprocess(image, mask, self.size)
        logits = self.model(x[None].to(self.device), m[None].to(self.device)).float()
        value = torch.softmax(logits, dim=1)[0, 1].item()
        if not math.isfinite(value):
            raise ZsharmError(f"the evaluator {self.name} gave a non-finite score")
        return value

    __call__ = score

    def __repr__(self):
        return f"Evaluator({self.name!r}, layers={self.model.layers}, width={self.model.width}, size={self.size})"


def load_evaluator(spec, device=None) -> Evaluator:
    """An Evaluator from `spec`: a checkpoint path (.safetensors, or .pth/.pt/.bin loaded weights-only),
    "authors" (their bestModel.pth from the cache, downloaded once when a URL is known), or "random"
    ("random:tiny", "random:small"): untrained, seeded weights for tests, with a warning."""
    spec = str(spec)
    if spec == "random" or spec.startswith("random:"):
        arch = spec.partition(":")[2] or "resnet50"
        warnings.warn(f"evaluator '{spec}' has random weights: its scores mean nothing (use it for tests only)",
                      stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = HarmonyClassifier.from_arch(arch)
        return Evaluator(model, device, SIZE, spec)
    if spec == "authors":
        return load_evaluator(authors_checkpoint(), device)
    path = Path(spec).expanduser()
    state, size = load_state(path)
    return Evaluator(HarmonyClassifier.from_state_dict(state), device, size, str(path))


def load_state(path) -> tuple[dict, int]:
    """(state_dict, input size) from a checkpoint file, safely: safetensors, or torch pickles weights-only.

    A `module.` prefix (DataParallel) and a wrapping {"state_dict": ...} or {"model": ...} are undone.
    """
    path = Path(path)
    if not path.is_file():
        raise ZsharmError(f"evaluator checkpoint {path} does not exist")
    size = SIZE
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as file:
                state = {k: file.get_tensor(k) for k in file.keys()}
                size = int((file.metadata() or {}).get("size", SIZE))
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ZsharmError(f"evaluator checkpoint {path}: unknown extension {path.suffix!r} "
                              f"(use .safetensors, .pth or .pt)")
    except ZsharmError:
        raise
    except Exception as error:
        raise ZsharmError(f"cannot read evaluator checkpoint {path}: {_one_line(error)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZsharmError(f"evaluator checkpoint {path} is not a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, size


def authors_checkpoint() -> Path:
    """Path of the authors' bestModel.pth in the cache, downloading it first if a URL is known."""
    from zsharm.models import cache_dir

    path = cache_dir("evaluator") / AUTHORS_FILE
    if path.is_file():
        return path
    url = os.environ.get("ZSHARM_EVALUATOR_URL") or AUTHORS_URL
    if not url:
        raise ZsharmError(f"the authors' evaluator is not at {path}; their repository (WindVChen/Diff-Harmonization) "
                          f"does not link it: put bestModel.pth there, or set ZSHARM_EVALUATOR_URL, or train one "
                          f"with `zsharm train-evaluator`")
    _download(url, path, AUTHORS_SHA256 if url == AUTHORS_URL else None)
    return path


def _download(url: str, path: Path, sha256: str | None) -> None:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(path) as temp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(temp, "wb") as file, tqdm(total=total, unit="B", unit_scale=True, desc=path.name) as bar:
                while chunk := response.read(1 << 20):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if sha256 and digest.hexdigest() != sha256:
                raise ZsharmError(f"downloaded {url} has sha256 {digest.hexdigest()}, expected {sha256}")
    except ZsharmError:
        raise
    except Exception as error:
        raise ZsharmError(f"cannot download the evaluator from {url}: {_one_line(error)}") from None


def save_checkpoint(model: HarmonyClassifier, path, size: int = SIZE, **metadata) -> Path:
    """Write `model` as safetensors (atomically), with its shape and input size in the metadata."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "zsharm-evaluator", "layers": ",".join(map(str, model.layers)), "width": str(model.width),
            "size": str(size), **{k: str(v) for k, v in metadata.items()}}
    with atomic_path(path) as temp:
        save_file(state, str(temp), metadata=meta)
    return Path(path)


def load_init(model: HarmonyClassifier, path) -> None:
    """Start training from a checkpoint: an evaluator of the same shape, or torchvision-layout ResNet
    weights (conv1/bn1/layer1-4, e.g. ImageNet ones) whose RGB stem goes to the first 3 input channels and
    whose classifier is dropped."""
    state, _ = load_state(path)
    if "conv1.weight" in state:
        mapped = {}
        for key, value in state.items():
            if key == "conv1.weight":
                stem = torch.zeros_like(model.inp_encoder.weight)
                stem[:, :3] = value
                mapped["inp_encoder.weight"] = stem
            elif key.startswith("bn1."):
                mapped["encoder.0." + key[4:]] = value
            elif m := re.match(r"layer([1-4])\.(.*)", key):
                mapped[f"encoder.{FIRST_STAGE - 1 + int(m[1])}.{m[2]}"] = value
        state = mapped
    state = {k: v for k, v in state.items() if not k.startswith("classify_fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise ZsharmError(f"--init {path} does not fit the network: {_one_line(error)}") from None
    missing = [k for k in missing if not k.startswith("classify_fc.")]
    if missing or unexpected:
        raise ZsharmError(f"--init {path} does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")


# ---------------------------------------------------------------- training data


@dataclass(frozen=True)
class Sample:
    """One training example: an image, its mask (None: a random one is drawn), the label (1 = real,
    0 = composite), whether the foreground is to be perturbed on the fly, and the photo it comes from
    (the validation split never separates samples of one photo)."""

    image: Path
    mask: Path | None
    label: int
    perturb: bool
    group: str


def find_iharmony_samples(root, split: str | None = "train") -> list[Sample]:
    """Composites (label 0) and their real images (label 1) from an iHarmony4-layout folder: one or more
    subsets each holding composite_images/, masks/ and real_images/, named as `a0001_1_2.jpg` (composite),
    `a0001_1.png` (mask), `a0001.jpg` (real). Where a subset has its `<Subset>_<split>.txt` list, only the
    composites it names are used, so an evaluator trained on the train split never sees the test images."""
    root = Path(root)
    subsets = sorted({p.parent for p in root.rglob("composite_images") if p.is_dir()} |
                     ({root} if (root / "composite_images").is_dir() else set()))
    samples = []
    for subset in subsets:
        masks = _by_stem(subset / "masks")
        reals = _by_stem(subset / "real_images")
        listed = subset / f"{subset.name}_{split}.txt"
        keep = None
        if split and listed.is_file():
            keep = {Path(line.strip()).name for line in listed.read_text().splitlines() if line.strip()}
        for composite in sorted(_by_stem(subset / "composite_images").values()):
            if keep is not None and composite.name not in keep:
                continue
            mask_stem = composite.stem.rsplit("_", 1)[0]
            real_stem = mask_stem.rsplit("_", 1)[0]
            if mask_stem in masks and real_stem in reals:
                group = f"{subset.name}/{real_stem}"
                samples.append(Sample(composite, masks[mask_stem], 0, False, group))
                samples.append(Sample(reals[real_stem], masks[mask_stem], 1, False, group))
    return samples


def find_photo_samples(root) -> list[Sample]:
    """Photos and masks for synthetic composites: an iHarmony4 folder's real images and masks, a plain
    folder of pairs (x.png + x_mask.png, or images/ + masks/), or photos alone (random masks are drawn).
    Each photo gives a real sample (label 1) and a perturbed one (label 0)."""
    root = Path(root)
    pairs = []
    if any(True for _ in root.rglob("composite_images")) or (root / "real_images").is_dir():
        for sample in find_iharmony_samples(root):
            if sample.label == 1:
                pairs.append((sample.image, sample.mask))
        if not pairs:  # real_images without composites: use every mask of every real image
            for subset in sorted({p.parent for p in root.rglob("real_images") if p.is_dir()}):
                reals = _by_stem(subset / "real_images")
                for mask in sorted(_by_stem(subset / "masks").values()):
                    real = reals.get(mask.stem.rsplit("_", 1)[0])
                    if real is not None:
                        pairs.append((real, mask))
    else:
        from zsharm.batch import find_batch_items

        try:
            pairs = [(item.composite, item.mask) for item in find_batch_items(root)]
        except ZsharmError:
            pairs = []
    samples = []
    for image, mask in pairs:
        group = str(image.relative_to(root)) + ("" if mask is None else "|" + mask.name)
        samples.append(Sample(image, mask, 1, False, group))
        samples.append(Sample(image, mask, 0, True, group))
    return samples


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS}


def split_samples(samples: list[Sample], val_fraction: float, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Split by photo (group), seeded: at least one group in each part when there are two or more."""
    groups = sorted({s.group for s in samples})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_val = int(round(val_fraction * len(groups)))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    val_groups = {groups[i] for i in order[:n_val]}
    return [s for s in samples if s.group not in val_groups], [s for s in samples if s.group in val_groups]


def perturb_foreground(rgb: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A synthetic composite: the masked region's white balance, exposure, tone curve, saturation, hue and
    contrast changed at random (each with probability 1/2, at least one), as iHarmony4's composites were
    made by colour transfer / retouching of the foreground. rgb: uint8 H x W x 3; mask: H x W in [0, 1]."""
    x = rgb.astype(np.float32) / 255
    inside = mask > 0.5
    region = x.copy()
    ops = rng.random(6) < 0.5
    if not ops.any():
        ops[rng.integers(6)] = True
    if ops[0]:  # white balance: per-channel gains with mean 1
        gains = rng.uniform(0.7, 1.3, 3)
        region *= (gains / gains.mean()).astype(np.float32)
    if ops[1]:  # exposure: +-0.3 to 1 stop
        region *= np.float32(2 ** (rng.choice([-1, 1]) * rng.uniform(0.3, 1.0)))
    if ops[2]:  # tone curve: gamma in [1/2, 1/1.25] or [1.25, 2]
        region = np.clip(region, 0, 1) ** np.float32(np.exp(rng.choice([-1, 1]) * rng.uniform(0.22, 0.69)))
    grey = region @ np.array([0.299, 0.587, 0.114], np.float32)
    if ops[3]:  # saturation
        factor = rng.choice([rng.uniform(0.2, 0.7), rng.uniform(1.3, 1.8)])
        region = grey[..., None] + np.float32(factor) * (region - grey[..., None])
    if ops[4]:  # hue: rotate the chroma about the grey axis by 10-45 degrees
        region = region @ _hue_rotation(np.deg2rad(rng.choice([-1, 1]) * rng.uniform(10, 45))).T
    if ops[5]:  # contrast about the region's mean
        centre = region[inside].mean(axis=0) if inside.any() else region.mean(axis=(0, 1))
        factor = rng.choice([rng.uniform(0.5, 0.8), rng.uniform(1.25, 1.6)])
        region = centre + np.float32(factor) * (region - centre)
    weight = np.asarray(mask, np.float32)[..., None]
    out = weight * np.clip(region, 0, 1) + (1 - weight) * x
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)


def _hue_rotation(angle: float) -> np.ndarray:
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(axis, axis)
    return rotation.astype(np.float32)


def random_mask(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """An ellipse covering roughly 5-40% of the picture: a stand-in foreground for photos without masks."""
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    ry, rx = rng.uniform(0.15, 0.4) * height, rng.uniform(0.15, 0.4) * width
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


class HarmonyDataset(torch.utils.data.Dataset):
    """Samples as the evaluator sees them: (image (3,S,S), mask (1,S,S), label). Training draws fresh
    perturbations and flips each epoch (set `epoch`); validation is the same every time."""

    def __init__(self, samples: list[Sample], size: int, train: bool, seed: int = 0):
        self.samples, self.size, self.train, self.seed = samples, size, train, seed
        self.epoch = 0

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        sample = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch + 1 if self.train else 0, index])
        rgb = _read_rgb(sample.image)
        if sample.mask is None:
            # the real and perturbed samples of one photo share their mask: seed it by the photo
            mask = random_mask(*rgb.shape[:2], np.random.default_rng([self.seed, _stable_hash(sample.group)]))
        else:
            mask = _read_mask(sample.mask, rgb.shape[:2])
        if sample.perturb:
            rgb = perturb_foreground(rgb, mask.astype(np.float32), rng)
        if self.train and rng.random() < 0.5:
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        x, m = preprocess(np.ascontiguousarray(rgb), np.ascontiguousarray(mask), self.size)
        return x, m, sample.label


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _read_mask(path: Path, shape) -> np.ndarray:
    with Image.open(path) as image:
        mask = np.asarray(ImageOps.exif_transpose(image).convert("L"))
    if mask.shape != tuple(shape):
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > MASK_THRESHOLD * 255


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little")


# ---------------------------------------------------------------- training


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half; NaN when one
    class is absent."""
    from scipy.stats import rankdata

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def train_evaluator(data, out, synthetic: bool = False, epochs: int = 10, batch_size: int = 32,
                    val_fraction: float = 0.1, size: int = SIZE, limit: int | None = None, device=None,
                    arch: str = "resnet50", lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                    workers: int = 0, init=None, progress: bool = True) -> dict:
    """Train a HarmonyClassifier and save the best epoch (by validation AUC, then accuracy) to `out`
    (.safetensors), with the metrics in `out` + `.json`. Returns those metrics.

    data: an iHarmony4-layout folder (composites vs. real images), or with `synthetic` any folder of photos
    and masks (composites are made on the fly by `perturb_foreground`). limit: use only the first N photos.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ZsharmError(f"--out must end in .safetensors, got {out}")
    if epochs < 1 or batch_size < 1 or not 0 <= val_fraction < 1 or size < 32:
        raise ZsharmError("train-evaluator needs epochs >= 1, batch size >= 1, 0 <= val fraction < 1, size >= 32")
    data = Path(data)
    if not data.is_dir():
        raise ZsharmError(f"training data {data} is not a folder")
    samples = find_photo_samples(data) if synthetic else find_iharmony_samples(data)
    if not samples:
        kind = "photos (with masks)" if synthetic else "iHarmony4 composites (composite_images/, masks/, real_images/)"
        hint = "" if synthetic else "; use --synthetic for a folder of photos"
        raise ZsharmError(f"no {kind} found in {data}{hint}")
    if limit is not None:
        keep = sorted({s.group for s in samples})[:limit]
        samples = [s for s in samples if s.group in set(keep)]
    train_samples, val_samples = split_samples(samples, val_fraction, seed)

    torch.manual_seed(seed)
    device = _device(device)
    model = HarmonyClassifier.from_arch(arch)
    if init is not None:
        load_init(model, init)
    _to_device(model, device)
    train_set = HarmonyDataset(train_samples, size, train=True, seed=seed)
    val_set = HarmonyDataset(val_samples, size, train=False, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers,
                                               drop_last=len(train_set) > batch_size, generator=generator)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=batch_size, num_workers=workers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(train_loader)))

    metrics = {"data": str(data), "synthetic": synthetic, "arch": arch, "size": size, "epochs": epochs,
               "batch_size": batch_size, "lr": lr, "seed": seed, "train_samples": len(train_samples),
               "val_samples": len(val_samples), "history": [], "best_epoch": None, "checkpoint": str(out)}
    best_key = None
    for epoch in range(epochs):
        train_set.epoch = epoch
        model.train()
        losses, correct, seen = [], 0, 0
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for x, m, y in bar:
            x, m, y = x.to(device), m.to(device), y.to(device)
            logits = model(x, m)
            loss = F.cross_entropy(logits, y)
            if not torch.isfinite(loss):
                raise ZsharmError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); try a lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "train_accuracy": correct / max(seen, 1),
               "seconds": round(time.perf_counter() - start, 2)}
        if len(val_set):
            row.update(evaluate_classifier(model, val_loader, device, progress))
        metrics["history"].append(row)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        key = (_finite(row.get("val_auc")), _finite(row.get("val_accuracy")))
        if best_key is None or key > best_key or not len(val_set):
            best_key = key
            metrics["best_epoch"] = epoch + 1
            metrics["best"] = row
            save_checkpoint(model, out, size, arch=arch, epoch=epoch + 1,
                            val_auc=row.get("val_auc"), val_accuracy=row.get("val_accuracy"))
    write_json(out.with_suffix(".json"), _jsonable(metrics))
    return metrics


@torch.no_grad()
def evaluate_classifier(model: HarmonyClassifier, loader, device, progress: bool = False) -> dict:
    """Validation loss, accuracy (probability >= 0.5 means harmonious) and ROC-AUC of `model` on `loader`."""
    model.eval()
    probs, labels, losses = [], [], []
    for x, m, y in tqdm(loader, desc="validate", disable=not progress, leave=False):
        logits = model(x.to(device), m.to(device)).float()
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        probs.append(torch.softmax(logits, 1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs), np.concatenate(labels)
    return {"val_loss": float(np.sum(losses) / len(labels)),
            "val_accuracy": float(((probs >= 0.5) == (labels == 1)).mean()),
            "val_auc": roc_auc(labels, probs)}


def _finite(value) -> float:
    return value if value is not None and math.isfinite(value) else -math.inf


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _device(device) -> torch.device:
    if device is None:
        from zsharm.models import default_device

        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ZsharmError(f"unknown device {device!r}: {_one_line(error)}") from None


def _to_device(model: nn.Module, device: torch.device) -> nn.Module:
    try:
        return model.to(device)
    except (RuntimeError, AssertionError) as error:  # e.g. cuda asked for on a machine without it
        raise ZsharmError(f"cannot use device {device}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# ---------------------------------------------------------------- CLI


def register(subparsers) -> None:
    """Add `zsharm train-evaluator`."""
    parser = subparsers.add_parser(
        "train-evaluator", help="train the harmony evaluator (stage 3)",
        description="Train the two-class harmony evaluator on an iHarmony4-layout folder (composite_images/, "
                    "masks/, real_images/) or, with --synthetic, on composites made on the fly from any photos "
                    "and masks. Saves the best epoch (validation ROC-AUC) as safetensors, metrics beside it.")
    parser.add_argument("data", type=Path, metavar="DATA", help="training folder")
    parser.add_argument("--out", type=Path, required=True, metavar="CKPT.safetensors", help="checkpoint to write")
    parser.add_argument("--synthetic", action="store_true", help="perturb the foregrounds of real photos on the fly")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of photos held out (default 0.1)")
    parser.add_argument("--size", type=int, default=SIZE, help=f"input size (the authors': {SIZE})")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N photos")
    parser.add_argument("--device", default=None, help="cuda, cpu, mps (default: the best available)")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="resnet50",
                        help="network size (default: the authors' resnet50; tiny and small train fast)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data-loading processes")
    parser.add_argument("--init", type=Path, default=None, metavar="CKPT",
                        help="start from an evaluator or a torchvision-layout ResNet checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_train_command)


def _train_command(args: argparse.Namespace) -> int:
    metrics = train_evaluator(args.data, args.out, synthetic=args.synthetic, epochs=args.epochs,
                              batch_size=args.batch_size, val_fraction=args.val_fraction, size=args.size,
                              limit=args.limit, device=args.device, arch=args.arch, lr=args.lr, seed=args.seed,
                              workers=args.workers, init=args.init, progress=not args.quiet)
    best = metrics.get("best", {})
    scores = [f"{name} {best[key]:.3f}" for key, name in (("val_accuracy", "val accuracy"), ("val_auc", "ROC-AUC"))
              if isinstance(best.get(key), float) and math.isfinite(best[key])]
    print(f"saved {args.out} (epoch {metrics['best_epoch']}" + "".join(", " + s for s in scores) + ")")
    return 0
