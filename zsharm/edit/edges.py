"""The two edge detectors of the structure loss L_Edge: a Sobel filter E_S and PiDiNet E_D."""

import kornia
import torch

from zsharm.edit.pidinet import PiDiNet

# torchvision's ImageNet statistics, the normalisation PiDiNet was trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_SOBEL = kornia.filters.Sobel()  # normalized 3x3 kernels, magnitude sqrt(gx^2 + gy^2 + 1e-6)


def sobel(img: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude of a BxCxHxW image (kornia's `Sobel()` with its defaults, the
    authors' E_S). Same shape as the input; replicate padding at the border."""
    return _SOBEL(img)


def imagenet_normalize(img01: torch.Tensor) -> torch.Tensor:
    """(img - mean) / std per channel of a Bx3xHxW image in [0, 1], as torchvision's Normalize does."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=img01.dtype, device=img01.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=img01.dtype, device=img01.device).view(-1, 1, 1)
    return (img01 - mean) / std


def pidinet_edges(model: PiDiNet, img01: torch.Tensor) -> torch.Tensor:
    """PiDiNet's fused edge map (Bx1xHxW, in [0, 1]) of a Bx3xHxW image in [0, 1] (the authors' E_D).
    Gradients flow to the image when autograd is on."""
    return model(imagenet_normalize(img01))[-1]
