"""What stage 2 can work on, checked before any model work: the image and its mask read together, the work size
within what the model and the image can use, the object neither vanishing nor filling the picture there. Every
entry point (the commands, Harmonizer, run_iteration) calls `check_inputs`."""

from __future__ import annotations

import logging

import numpy as np

from zsharm.errors import ZsharmError
from zsharm.io.masks import read_pair
from zsharm.io.pictures import Picture, work_size

log = logging.getLogger("zsharm")

MAX_WORK_SIZE = 1024   # Stable Diffusion 2 base was trained at 512 px (the v model at 768); twice that at most


def check_inputs(image, mask, config) -> tuple[Picture, np.ndarray]:
    """The image and mask read and checked together (see `zsharm.io.read_pair`), and checked at the work size
    of `config`: the work size is not above what the model or the image can use, and the object neither
    vanishes nor fills the picture there. Returns (picture, mask)."""
    picture, mask = read_pair(image, mask)
    width, height = picture.size
    long_side = max(width, height)
    if config.size > MAX_WORK_SIZE:
        raise ZsharmError(f"--size {config.size} is above {MAX_WORK_SIZE}: Stable Diffusion 2 base was trained at "
                          f"512 px and repeats objects far above it, at minutes per step; use 512 (the default)")
    covering = -(-long_side // 64) * 64  # the smallest work size that does not upsample the image
    if config.size > max(covering, 512):
        raise ZsharmError(f"--size {config.size} is above the image's long side ({long_side} px): upsampling "
                          f"adds no detail and costs time; use --size {covering} or less")
    if config.size > long_side:
        log.warning(f"the work size {config.size} is above the image's long side ({long_side} px): "
                    f"the image is upsampled for the model")
    from zsharm.edit.blending import mask_at  # torch: imported when work starts, not for --help
    work_wh = work_size(picture.size, config.size)
    latent_wh = (work_wh[0] // 8, work_wh[1] // 8)
    for what, wh in (("work size", work_wh), ("latent size", latent_wh)):
        resized = mask_at(mask, wh, config.mask_threshold)
        if not resized.any():
            raise ZsharmError(f"the object is too small for the work size: its {int(mask.sum())} mask pixels in "
                              f"{width}x{height} vanish at the {what} {wh[0]}x{wh[1]} (--size {config.size}); "
                              f"crop the image around the object, or raise --size")
        if resized.all():
            raise ZsharmError(f"the background is too small for the work size: it vanishes at the {what} "
                              f"{wh[0]}x{wh[1]} (--size {config.size}); give the object more surroundings")
    return picture, mask
