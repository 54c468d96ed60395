"""PiDiNet, the learned edge detector of the structure loss (Su et al., "Pixel Difference Networks for
Efficient Edge Detection", ICCV 2021), written to load the published checkpoints unchanged.

The harmonization paper uses PiDiNet-tiny with the `carv4` layout and both extra modules on (CDCM
dilations, CSAM attention). Every op runs in the order of the original, unconverted network, so edge maps
and the losses built on them match the authors' numbers to float rounding.
"""

import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from zsharm.cache import cache_dir, fetch
from zsharm.errors import ZsharmError

WEIGHTS_URL = "https://github.com/hellozhuo/pidinet/raw/master/trained_models/{file}"
WEIGHTS_ENV = "ZSHARM_PIDINET_WEIGHTS"

# width C of the first stage, CDCM width, published file (Table 5 of the paper) and its sha256
VARIANTS = {
    "tiny": dict(channels=20, dil=8, file="table5_pidinet-tiny.pth",
                 sha256="e32b23fff6c1cb9bd4385a1d615023346fc2e3f2f3a8db7f78cc4ce95a14730c"),
    "full": dict(channels=60, dil=24, file="table5_pidinet.pth",
                 sha256="80860ac267258b5f27486e0ef152a211d0b08120f62aeb185a050acc30da486c"),
}
VARIANTS["pidinet"] = VARIANTS["full"]

# The kind of pixel difference of each of the 16 layers: the init block, then blocks 1_1 ... 4_4.
CARV4 = ("cd", "ad", "rd", "cv") * 4

# APDC: tap j of the kernel is w[j] - w[AD_PAIR[j]], so each weight multiplies the difference between a
# pixel and its clockwise neighbour on the 3x3 ring (0 1 2 5 8 7 6 3 0).
AD_PAIR = [3, 0, 1, 6, 4, 2, 7, 8, 5]
# RPDC: weights 1..8 of the 3x3 kernel (weight 0 is unused) spread to a 5x5 kernel, weight k going to the
# k-th of the eight directions in raster order: +w at distance 2 (outer ring), -w at distance 1 (inner ring),
# so each weight multiplies (outer pixel - inner pixel).
RD_OUTER = [0, 2, 4, 10, 14, 20, 22, 24]
RD_INNER = [6, 7, 8, 11, 13, 16, 17, 18]


def pixel_difference_conv(x, weight, kind, groups=1):
    """A 3x3 pixel difference convolution of kind cv (vanilla), cd (central), ad (angular) or rd (radial).

    Computed as the original network does in eval: cd as a 3x3 conv minus a 1x1 conv with the kernel's sum,
    ad and rd as one conv with a kernel rebuilt from the weights.
    """
    if kind == "cv":
        return F.conv2d(x, weight, padding=1, groups=groups)
    if kind == "cd":
        # the 1x1 conv first, as in the original: autograd then sums the input gradients in the same order
        center = F.conv2d(x, weight.sum(dim=[2, 3], keepdim=True), groups=groups)
        return F.conv2d(x, weight, padding=1, groups=groups) - center
    out_ch, in_ch = weight.shape[:2]
    flat = weight.view(out_ch, in_ch, 9)
    if kind == "ad":
        return F.conv2d(x, (flat - flat[:, :, AD_PAIR]).view_as(weight), padding=1, groups=groups)
    if kind == "rd":
        kernel = weight.new_zeros(out_ch, in_ch, 25)
        kernel[:, :, RD_OUTER] = flat[:, :, 1:]
        kernel[:, :, RD_INNER] = -flat[:, :, 1:]
        return F.conv2d(x, kernel.view(out_ch, in_ch, 5, 5), padding=2, groups=groups)
    raise ValueError(f"unknown pixel difference kind {kind!r}")


class PDConv(nn.Module):
    """A bias-free 3x3 pixel difference convolution holding its weight like nn.Conv2d does."""

    def __init__(self, kind, in_channels, out_channels, groups=1):
        super().__init__()
        self.kind, self.groups = kind, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        return pixel_difference_conv(x, self.weight, self.kind, self.groups)


class PDCBlock(nn.Module):
    """Depthwise pixel difference conv, ReLU, pointwise conv, plus a residual (max-pooled and projected
    by a 1x1 conv where the block halves the resolution)."""

    def __init__(self, kind, in_channels, out_channels, stride=1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.conv1 = PDConv(kind, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)

    def forward(self, x):
        if self.stride > 1:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        y = self.conv2(F.relu(self.conv1(x)))
        if self.stride > 1:
            x = self.shortcut(x)
        return y + x


class CDCM(nn.Module):
    """Compact dilation convolution module: ReLU, 1x1 conv, then the sum of four dilated 3x3 convs."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        for i, rate in enumerate((5, 7, 9, 11), start=1):
            conv = nn.Conv2d(out_channels, out_channels, kernel_size=3, dilation=rate, padding=rate, bias=False)
            setattr(self, f"conv2_{i}", conv)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x):
        x = self.conv1(F.relu(x))
        return self.conv2_1(x) + self.conv2_2(x) + self.conv2_3(x) + self.conv2_4(x)


class CSAM(nn.Module):
    """Compact spatial attention module: scales the features by a one-channel sigmoid gate."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, kernel_size=1)
        self.conv2 = nn.Conv2d(4, 1, kernel_size=3, padding=1, bias=False)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x):
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    """1x1 conv from a stage's features to one edge logit map."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, kernel_size=1)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x):
        return self.conv(x)


class PiDiNet(nn.Module):
    """PiDiNet with CDCM and CSAM: four stages of PDC blocks (widths C, 2C, 4C, 4C; the last three start at
    half the resolution of the one before), one side edge map per stage and a learned 1x1 fusion of the four.

    `forward(x)` takes an ImageNet-normalised Bx3xHxW image and returns five Bx1xHxW sigmoid maps: the four
    side outputs, then the fused map (the one the edge loss uses).
    """

    def __init__(self, channels=20, dil=8, pdcs=CARV4):
        super().__init__()
        widths = [channels, 2 * channels, 4 * channels, 4 * channels]
        self.init_block = PDConv(pdcs[0], 3, channels)
        self.stages = []  # block attribute names per stage; they are the checkpoint's key prefixes
        layer, in_ch = 1, channels
        for s, width in enumerate(widths, start=1):
            names = []
            for b in range(1, 4 if s == 1 else 5):
                stride = 2 if s > 1 and b == 1 else 1
                names.append(f"block{s}_{b}")
                setattr(self, names[-1], PDCBlock(pdcs[layer], in_ch, width, stride))
                layer, in_ch = layer + 1, width
            self.stages.append(names)
        self.dilations = nn.ModuleList(CDCM(width, dil) for width in widths)
        self.attentions = nn.ModuleList(CSAM(dil) for _ in widths)
        self.conv_reduces = nn.ModuleList(MapReduce(dil) for _ in widths)
        self.classifier = nn.Conv2d(4, 1, kernel_size=1)
        nn.init.constant_(self.classifier.weight, 0.25)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        size = x.shape[-2:]
        x = self.init_block(x)
        logits = []
        for i, names in enumerate(self.stages):
            for name in names:
                x = getattr(self, name)(x)
            side = self.conv_reduces[i](self.attentions[i](self.dilations[i](x)))
            logits.append(F.interpolate(side, size, mode="bilinear", align_corners=False))
        logits.append(self.classifier(torch.cat(logits, dim=1)))
        return [torch.sigmoid(logit) for logit in logits]

    def edge_map(self, x):
        """The fused edge map (Bx1xHxW, in [0, 1]) of an ImageNet-normalised image."""
        return self.forward(x)[-1]


def _variant(variant):
    if variant not in VARIANTS:
        raise ZsharmError(f"unknown PiDiNet variant {variant!r}; choose tiny or full")
    return VARIANTS[variant]


def _build(spec, seed=0):
    # a private seed: building a network must not move the caller's global random state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return PiDiNet(spec["channels"], spec["dil"])


def _frozen(model, device, dtype):
    model.requires_grad_(False)
    return model.to(device=device, dtype=dtype).eval()


def random_pidinet(variant="tiny", seed=0) -> PiDiNet:
    """A PiDiNet of the given variant with the original's random initialisation (eval mode, frozen), for
    comparisons with the trained one. Leaves the global random state untouched."""
    return _frozen(_build(_variant(variant), seed), None, None)


def resolve_weights(weights=None, variant="tiny") -> Path:
    """The checkpoint file to load: `weights` if given, else $ZSHARM_PIDINET_WEIGHTS (a file, or a folder
    holding the published file name), else the cache, else a download from the authors' repository into
    the cache (ZSHARM_OFFLINE=1 or HF_HUB_OFFLINE=1 forbid it)."""
    spec = _variant(variant)
    source = "the given path"
    if weights is None and os.environ.get(WEIGHTS_ENV):
        weights, source = os.environ[WEIGHTS_ENV], f"${WEIGHTS_ENV}"
    if weights is not None:
        path = Path(weights).expanduser()
        if path.is_dir():
            path = path / spec["file"]
        if not path.is_file():
            raise ZsharmError(f"PiDiNet weights not found: {path} (from {source})")
        return path
    url = WEIGHTS_URL.format(file=spec["file"])
    return fetch(url, cache_dir("pidinet") / spec["file"], sha256=spec["sha256"], what=f"PiDiNet weights {spec['file']}",
                 hint=f"get {url} yourself and set {WEIGHTS_ENV} to the file or its folder")


def load_pidinet(weights=None, variant="tiny", device=None, dtype=None) -> PiDiNet:
    """The published PiDiNet (`tiny`: the one the harmonization paper uses, or `full`), in eval mode with
    frozen parameters. `weights` is a checkpoint file or a folder holding the published file name; see
    `resolve_weights` for where it is looked for when not given."""
    spec = _variant(variant)
    path = resolve_weights(weights, variant)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise ZsharmError(f"cannot read PiDiNet weights {path}: not a complete, tensor-only PyTorch checkpoint "
                          f"({type(exc).__name__})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ZsharmError(f"{path} is not a PiDiNet checkpoint (expected a dict with a 'state_dict' of tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = _build(spec)
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        first = (missing + unexpected + sorted(wrong))[0]
        raise ZsharmError(f"{path} does not fit PiDiNet-{variant}: {len(missing)} missing, {len(unexpected)} "
                          f"unexpected and {len(wrong)} mis-shaped parameters (first: {first})")
    model.load_state_dict(state, strict=True)
    return _frozen(model, device, dtype)
