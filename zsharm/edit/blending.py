"""Stage 2.5 - blending: the edited foreground over the untouched background, and the masks at work size.

    output = M * edited + (1 - M) * input

The mask is resized the authors' way (Lanczos, then binarised at > 100/255) to the work size and to the latent
size; the result of the blend is the next iteration's input.
"""

import numpy as np
import torch
from PIL import Image


def mask_at(mask: np.ndarray, size_wh, threshold: float = 100 / 255) -> np.ndarray:
    """A boolean mask (any size) Lanczos-resized to `size_wh` and binarised, as the authors resize theirs."""
    pil = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, "L")
    resized = np.asarray(pil.resize(tuple(size_wh), resample=Image.LANCZOS), dtype=np.float32) / 255.0
    return resized > np.float32(threshold)


def latent_mask(mask: np.ndarray, latent_wh, threshold: float = 100 / 255) -> torch.Tensor:
    """The mask at latent size (h/8 x w/8) as a float tensor of 0/1."""
    return torch.from_numpy(mask_at(mask, latent_wh, threshold).astype(np.float32))


def blend(edited: np.ndarray, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """M * edited + (1 - M) * image for uint8 H x W x 3 arrays and a boolean mask: background bit-identical."""
    return np.where(np.asarray(mask, dtype=bool)[..., None], edited, image).astype(np.uint8)
