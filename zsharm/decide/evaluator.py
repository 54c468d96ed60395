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

Their trained weights are in their repository, `HarmonizationDetect/exp/bestModel.pth` (WindVChen/Diff-Harmonization,
added in commit 8d8cb0f, unchanged since): `load_evaluator("authors")` fetches that file once, checks its git blob
id, and loads it weights-only with strict key matching. How they trained it is not published;
`zsharm train-evaluator` trains one on iHarmony4 or on composites made on the fly from any photos and masks.

What the authors score (`harmon_detect` in their inference.py) is a file pair: each iteration's blend saved as a
JPEG (PIL's defaults, quality 75) and re-read with cv2, and the user's original mask file read with cv2, its first
channel divided by 255 (soft, not binarised), at its own resolution. `score_files` is exactly that;
`score_saved` encodes an in-memory image the same way first (what the `paper` schedule scores); `score` takes the
image as it is in memory (the `fast` schedule: no JPEG loss in the decisions).
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from zsharm.cache import cache_dir, fetch, verify
from zsharm.errors import ZsharmError, one_line
from zsharm.models import move_to_device, resolve_device

SIZE = 256  # the authors' input size
# name -> (bottleneck blocks per stage, stem width); the final feature size is width * 8 * 4
ARCHS = {
    "resnet50": ((3, 4, 6, 3), 64),  # the authors'
    "small": ((1, 1, 1, 1), 32),
    "tiny": ((1, 1, 1, 1), 8),       # for tests: trains in seconds on a CPU
}
EXPANSION = 4
FIRST_STAGE = 3  # encoder.3 is layer1

# The authors' checkpoint, pinned to the commit that added it; a download is verified by its git blob id (nobody
# published a SHA-256). ~94 MB: a torch.save of the ResNet-50 state_dict.
AUTHORS_REPO = "WindVChen/Diff-Harmonization"
AUTHORS_COMMIT = "8d8cb0f8d33936bd15a1d529a0f305501b3a8e27"
AUTHORS_PATH = "HarmonizationDetect/exp/bestModel.pth"
AUTHORS_URL = f"https://github.com/{AUTHORS_REPO}/raw/{AUTHORS_COMMIT}/{AUTHORS_PATH}"
AUTHORS_GIT_BLOB = "d970f57d676ced739f072ffcc140af9d4e6ece2e"
AUTHORS_ARCH = "resnet50"
AUTHORS_FILE = "bestModel.pth"
WEIGHTS_ENV = "ZSHARM_EVALUATOR_WEIGHTS"  # a copy of bestModel.pth the user already has
JPEG_QUALITY = 75  # PIL's default, what the authors' `image.save(... .jpg)` writes


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
            raise ZsharmError(f"evaluator checkpoint does not fit the network: {one_line(error)}") from None
        return model

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, mask], dim=1)  # RGB then mask, as the authors concatenate
        x = self.encoder(self.inp_encoder(x))
        return self.classify_fc(torch.flatten(self.avgpool(x), 1))


def preprocess(image, mask, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """The authors' input: (3,S,S) image in [-1,1] and (1,S,S) mask in [0,1], each resized bilinearly on its own.

    image: PIL image or uint8 H x W x 3 RGB array. mask: H x W of bool, 8- or 16-bit values (divided by full
    scale) or floats in [0, 1]; soft values are kept, as the authors keep theirs. The mask may have another
    resolution than the image (the authors pair the 512x512 blend with the original mask file): both are
    squashed to S x S, so they only need to show the same frame.

    The arithmetic is albumentations' Resize(S, S) as the authors call it: cv2.resize INTER_LINEAR on the uint8
    image (so the resized image is rounded to uint8 before /255) and on the float32 mask.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ZsharmError(f"the evaluator needs an 8-bit RGB image, got {rgb.dtype} {rgb.shape}")
    mask = soft_mask(mask)
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_LINEAR)
    x = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    return x, torch.from_numpy(mask)[None]


def soft_mask(mask) -> np.ndarray:
    """A mask as float32 H x W in [0, 1]: bool as 0/1, unsigned integers divided by their full scale."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ZsharmError(f"the evaluator's mask must be H x W, got shape {mask.shape}")
    if mask.dtype == bool:
        return mask.astype(np.float32)
    if mask.dtype in (np.uint8, np.uint16):
        return mask.astype(np.float32) / np.iinfo(mask.dtype).max
    mask = mask.astype(np.float32)
    if not (np.isfinite(mask).all() and mask.min(initial=0) >= 0 and mask.max(initial=0) <= 1):
        raise ZsharmError("the evaluator's mask must hold values in [0, 1] (or be bool, uint8 or uint16)")
    return mask


def read_image_as_authors(path) -> np.ndarray:
    """uint8 RGB H x W x 3 as their inference.py reads it: cv2.imread (BGR, EXIF orientation applied), BGR->RGB.

    The authors' decoder, not zsharm.io's reader, because the score must be theirs to the last bit."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ZsharmError(f"cv2 cannot read the image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask_as_authors(path) -> np.ndarray:
    """float32 H x W in [0, 1] as their inference.py reads the mask: cv2.imread (3 channels), channel 0 / 255.

    Not binarised: a JPEG mask's soft edges and compression noise reach the network as they are."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ZsharmError(f"cv2 cannot read the mask {path}")
    return bgr[:, :, 0].astype(np.float32) / 255.0


def decode_mask_as_authors(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """`read_mask_as_authors` of a file's bytes already read (cv2 decodes them as imread decodes the file)."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ZsharmError(f"cv2 cannot read the mask {name}")
    return bgr[:, :, 0].astype(np.float32) / 255.0


def jpeg_round_trip(image: Image.Image, quality: int = JPEG_QUALITY) -> np.ndarray:
    """uint8 RGB of `image` saved as the authors save each blend (PIL JPEG, quality 75, 4:2:0) and read back
    with cv2, as their evaluator reads it. Same bytes as writing the file: PIL encodes in memory identically."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    bgr = cv2.imdecode(np.frombuffer(buffer.getvalue(), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class Evaluator:
    """A loaded classifier: `score(image, mask)` is the probability that `image` is harmonious."""

    def __init__(self, model: HarmonyClassifier, device=None, size: int = SIZE, name: str = ""):
        self.device = resolve_device(device)
        self.model = move_to_device(model, self.device).eval()
        self.size = int(size)
        self.name = name

    @torch.no_grad()
    def score(self, image, mask) -> float:
        """Probability of the harmonious class, in [0, 1], of `image` as it is in memory (PIL RGB or uint8
        array) with `mask` (bool or soft, see `preprocess`)."""
        x, m = preprocess(image, mask, self.size)
        logits = self.model(x[None].to(self.device), m[None].to(self.device)).float()
        value = torch.softmax(logits, dim=1)[0, 1].item()
        if not math.isfinite(value):
            raise ZsharmError(f"the evaluator {self.name} gave a non-finite score")
        return value

    __call__ = score

    def score_saved(self, image: Image.Image, mask) -> float:
        """The score the authors' loop gives `image`: saved as a quality-75 JPEG, read back, then scored."""
        return self.score(jpeg_round_trip(image), mask)

    def score_files(self, image_path, mask_path) -> float:
        """Their `harmon_detect(img_path, mask_path)`: both files read with cv2 as they read them."""
        return self.score(read_image_as_authors(image_path), read_mask_as_authors(mask_path))

    def __repr__(self):
        return f"Evaluator({self.name!r}, layers={self.model.layers}, width={self.model.width}, size={self.size})"


def load_evaluator(spec, device=None) -> Evaluator:
    """An Evaluator from `spec`: a checkpoint path (.safetensors, or .pth/.pt/.bin loaded weights-only),
    "authors" (their bestModel.pth: from $ZSHARM_EVALUATOR_WEIGHTS, the cache, or fetched once from their
    repository, verified), or "random" ("random:tiny", "random:small"): untrained, seeded weights for tests,
    with a warning."""
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
        return Evaluator(load_authors(authors_checkpoint()), device, SIZE, "authors")
    path = Path(spec).expanduser()
    state, size = load_state(path)
    return Evaluator(HarmonyClassifier.from_state_dict(state), device, size, str(path))


def load_authors(path) -> HarmonyClassifier:
    """Their network with the weights of `path` (their bestModel.pth: a plain state_dict), every key matched."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling problems come as many exception types
        raise ZsharmError(f"cannot read the authors' evaluator {path}: {one_line(error)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZsharmError(f"the authors' evaluator {path} is not a state_dict of tensors")
    model = HarmonyClassifier.from_arch(AUTHORS_ARCH)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ZsharmError(f"{path} is not the authors' evaluator layout: {len(missing)} keys missing "
                          f"({', '.join(missing[:3])}), {len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ZsharmError(f"{path} is not the authors' evaluator layout: {one_line(error)}") from None
    return model


def authors_checkpoint() -> Path:
    """Path of the authors' bestModel.pth: $ZSHARM_EVALUATOR_WEIGHTS, else the cache, fetched there first if
    absent. Either way its git blob id must be the one committed to their repository."""
    local = os.environ.get(WEIGHTS_ENV)
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise ZsharmError(f"{WEIGHTS_ENV}={local} is not a file; point it at bestModel.pth ({AUTHORS_URL})")
        problem = verify(path, git_blob=AUTHORS_GIT_BLOB)
        if problem:
            raise ZsharmError(f"{path} (from {WEIGHTS_ENV}) is not the authors' bestModel.pth ({problem}); "
                              f"download it from {AUTHORS_URL}")
        return path
    path = cache_dir("evaluator") / AUTHORS_FILE
    return fetch(AUTHORS_URL, path, git_blob=AUTHORS_GIT_BLOB, what="the authors' evaluator (bestModel.pth, ~94 MB)",
                 hint=f"download {AUTHORS_URL} and place it at {path}, or set {WEIGHTS_ENV} to its path")


def course_evaluator(spec: str | None = None, device=None, fallback: str = "random") -> tuple[Evaluator, str]:
    """(evaluator, label) for the course notebooks: `spec` (default $ZSHARM_EVALUATOR, else "authors").

    The authors' evaluator whenever it is cached or can be fetched; if it cannot (offline, no connection, a
    file that fails its check), the untrained `fallback` network, and the label says so in capitals. A spec
    other than "authors" is loaded as it is, and its errors are raised."""
    spec = spec or os.environ.get("ZSHARM_EVALUATOR") or "authors"
    if spec != "authors":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the label says it when the network is random
            evaluator = load_evaluator(spec, device)
        random = spec.startswith("random")
        return evaluator, (f"evaluator {spec!r}: UNTRAINED random weights, its scores and decisions are arbitrary"
                           if random else f"evaluator checkpoint {spec}")
    try:
        return load_evaluator("authors", device), (f"the authors' evaluator (bestModel.pth from {AUTHORS_REPO} "
                                                   f"at {AUTHORS_COMMIT[:7]})")
    except ZsharmError as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = load_evaluator(fallback, device)
        return evaluator, (f"RANDOM, UNTRAINED evaluator {fallback!r} (scores and decisions are arbitrary), "
                           f"because the authors' is unavailable: {error}")


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
    except Exception as error:  # torch's own first line advises weights_only=False: never pass that on
        raise ZsharmError(f"cannot read evaluator checkpoint {path}: not a complete, tensor-only checkpoint "
                          f"({type(error).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ZsharmError(f"evaluator checkpoint {path} is not a state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, size


def save_checkpoint(model: HarmonyClassifier, path, size: int = SIZE, **metadata) -> Path:
    """Write `model` as safetensors (atomically), with its shape and input size in the metadata."""
    from safetensors.torch import save

    from zsharm.io.files import write_bytes_atomic

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "zsharm-evaluator", "layers": ",".join(map(str, model.layers)), "width": str(model.width),
            "size": str(size), **{k: str(v) for k, v in metadata.items()}}
    # the bytes written by zsharm's writer: safetensors' own file writer makes the file private (0600), unlike
    # every other output
    write_bytes_atomic(path, save(state, metadata=meta))
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
        raise ZsharmError(f"--init {path} does not fit the network: {one_line(error)}") from None
    missing = [k for k in missing if not k.startswith("classify_fc.")]
    if missing or unexpected:
        raise ZsharmError(f"--init {path} does not fit the network: missing {missing[:3]}, unexpected {unexpected[:3]}")
