"""Classical harmonization baselines: what zsharm has to beat.

Each takes `(composite, mask)` - composite HxWx3 uint8 (0-255) or float (0-1), mask bool HxW (True =
foreground) - and returns an image of the composite's dtype in which only the foreground changed: the
background is the input's, bit for bit.

- copy_paste:          the composite itself (no harmonization).
- reinhard:            Reinhard et al. 2001 colour transfer: the foreground's per-channel mean and
                       standard deviation in CIELAB are set to the background's.
- histogram_matching:  the foreground's per-channel histograms are matched to the background's
                       (scikit-image).
- poisson:             Perez et al. 2003 gradient-domain blending (OpenCV seamlessClone): the foreground's
                       own gradients, the background's colours on the seam.

On zsharm's synthetic set (data/synthetic) all three lose to copy-paste on mean fMSE, as classical methods
often do on iHarmony4 (DoveNet, Table 2): they pull the foreground towards the background's statistics,
which helps only where the object's true colours resemble its scene's (Reinhard wins on the cup and cat
photos there).
"""

import numpy as np

from zsharm.quality.metrics import binary_mask
from zsharm.errors import ZsharmError


def _check(composite, mask):
    image = np.asarray(composite)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ZsharmError(f"a composite must be HxWx3, got shape {image.shape}")
    if image.dtype != np.uint8 and not np.issubdtype(image.dtype, np.floating):
        raise ZsharmError(f"a composite must be uint8 or float, got {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ZsharmError("the composite holds NaN or infinite values")
    m = binary_mask(mask)
    if m.shape != image.shape[:2]:
        raise ZsharmError(f"mask shape {m.shape} does not match composite shape {image.shape[:2]}")
    if not m.any():
        raise ZsharmError("the mask is empty: there is no foreground to harmonize")
    if m.all():
        raise ZsharmError("the mask covers the whole image: there is no background to match")
    return image, m


def _to_unit(image):
    """float64 in [0, 1] from uint8 or a float image already in [0, 1]."""
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def _finish(new_unit, composite, mask):
    """Write the new foreground (float [0, 1]) back into a copy of the composite, in its dtype."""
    out = composite.copy()
    if composite.dtype == np.uint8:
        out[mask] = np.round(np.clip(new_unit[mask], 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        out[mask] = np.clip(new_unit[mask], 0.0, 1.0).astype(composite.dtype)
    return out


def copy_paste(composite, mask):
    """The composite unchanged (a copy): the no-harmonization baseline."""
    image, _ = _check(composite, mask)
    return image.copy()


def reinhard(composite, mask):
    """Reinhard colour transfer in CIELAB: foreground mean/std per channel set to the background's."""
    from skimage.color import lab2rgb, rgb2lab

    image, m = _check(composite, mask)
    lab = rgb2lab(_to_unit(image))
    fg, bg = lab[m], lab[~m]
    scale = bg.std(axis=0) / np.maximum(fg.std(axis=0), 1e-6)
    lab[m] = (fg - fg.mean(axis=0)) * scale + bg.mean(axis=0)
    lab[..., 0] = np.clip(lab[..., 0], 0.0, 100.0)
    return _finish(lab2rgb(lab), image, m)


def histogram_matching(composite, mask):
    """Match each channel's foreground histogram to the background's (skimage.exposure.match_histograms)."""
    from skimage.exposure import match_histograms

    image, m = _check(composite, mask)
    unit = _to_unit(image)
    # match_histograms wants images; an Nx1x3 column of pixels is one
    matched = match_histograms(unit[m][:, None, :], unit[~m][:, None, :], channel_axis=-1)
    new = unit.copy()
    new[m] = matched[:, 0, :]
    return _finish(new, image, m)


def poisson(composite, mask):
    """Poisson blending with OpenCV's seamlessClone (NORMAL_CLONE).

    seamlessClone takes its guidance from the source's gradients deep inside the mask and from the
    destination's elsewhere (including a 3-pixel rim inside the mask), and its boundary values from the
    destination. A composite's own gradients in that rim hold the seam, so the destination is the
    background alone: the composite with the foreground inpainted from its surroundings (OpenCV Telea).

    Borders: seamlessClone clears the mask's outermost rows and columns and cannot place a box that
    touches the frame, so the images are padded first. Where the foreground meets the frame there is no
    background to blend with: the images are mirrored across the frame (by their whole size), which
    makes the solution symmetric there, i.e. a zero-flux (Neumann) edge rather than one pinned to
    inpainted colours. Masks clear of the frame get a 4-pixel pad.
    """
    import cv2

    image, m = _check(composite, mask)
    u8 = image if image.dtype == np.uint8 else np.round(_to_unit(image) * 255.0).astype(np.uint8)
    bgr = np.ascontiguousarray(u8[..., ::-1])
    plate = cv2.inpaint(bgr, m.astype(np.uint8) * 255, 3, cv2.INPAINT_TELEA)
    h, w = m.shape
    touches = m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()
    py, px = (h - 1, w - 1) if touches else (4, 4)
    src = cv2.copyMakeBorder(bgr, py, py, px, px, cv2.BORDER_REFLECT_101)
    dst = cv2.copyMakeBorder(plate, py, py, px, px, cv2.BORDER_REFLECT_101)
    mp = cv2.copyMakeBorder(m.astype(np.uint8), py, py, px, px, cv2.BORDER_REFLECT_101)
    mp[0, :] = mp[-1, :] = mp[:, 0] = mp[:, -1] = 0  # what seamlessClone would clear itself
    ys, xs = np.nonzero(mp)
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    # seamlessClone puts the mask's bounding box at center - (width // 2, height // 2)
    center = (int(x0 + (x1 - x0 + 1) // 2), int(y0 + (y1 - y0 + 1) // 2))
    blended = cv2.seamlessClone(src, dst, mp * 255, center, cv2.NORMAL_CLONE)
    blended = blended[py:py + h, px:px + w, ::-1]
    if image.dtype == np.uint8:
        out = image.copy()
        out[m] = blended[m]
        return out
    return _finish(blended.astype(np.float64) / 255.0, image, m)


BASELINES = {
    "copy-paste": copy_paste,
    "reinhard": reinhard,
    "histogram": histogram_matching,
    "poisson": poisson,
}
