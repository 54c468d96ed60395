"""A stage-2.3 loss term of the tests' own, to show what adding one takes: this module, and its name in the
configuration (`nulltext_terms=("edges", "colour_term:ColourHistogramLoss")`); nothing in zsharm changes."""

import numpy as np
import torch

BINS = 8
WEIGHT = 50.0


def soft_histogram(pixels: torch.Tensor) -> torch.Tensor:
    """Per channel, BINS Gaussian-smoothed bins over [0, 1] (differentiable): channels x BINS, rows summing to 1."""
    centres = (torch.arange(BINS, dtype=pixels.dtype) + 0.5) / BINS
    weights = torch.exp(-((pixels[..., None] - centres) * BINS) ** 2)
    counts = weights.sum(1)
    return counts / counts.sum(-1, keepdim=True)


class ColourHistogramLoss:
    """The prediction's colour histogram inside the mask against the input's."""

    crop = None  # reads the whole decoded prediction

    def __init__(self, run, image, mask, pidinet):
        self.inside = torch.from_numpy(np.asarray(mask, dtype=bool).reshape(-1))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).reshape(-1, 3)
        self.reference = soft_histogram(pixels[self.inside].T)

    def __call__(self, image01):
        pixels = image01[0].float().reshape(3, -1)[:, self.inside]
        distance = torch.mean((soft_histogram(pixels) - self.reference) ** 2)
        return WEIGHT * distance, {"colour_histogram_mse": distance.item()}
