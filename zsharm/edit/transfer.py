"""Carry a colour and light change found at work resolution onto the full-resolution foreground.

The diffusion model edits a small copy of the image (long side 512). Resizing its output back up would blur
the foreground; instead we explain the change as a smooth, edge-aware local affine colour model,
    after(x) ~= A(x) @ before(x) + b(x)      (A a 3x3 matrix, b an offset, per pixel),
fitted at work resolution and applied to the full-resolution pixels, so the full-resolution detail passes
through untouched while its colour and light follow the edit. This is guided filtering (He et al. 2010) with
its coefficients upsampled as in the fast guided filter (He & Sun 2015) and bilateral guided upsampling
(Chen et al. 2016). Two things differ from the textbook filter:
- Statistics are masked (normalised box filters over foreground pixels only), so the untouched background
  never pulls the foreground's coefficients toward "no change".
- The ridge pulls A toward a coarser fit (global, then a wide window) instead of toward zero, so flat
  regions take their neighbourhood's colour matrix and keep their fine texture rather than going flat.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from zsharm.errors import ZsharmError

METHODS = ("guided", "resize")


def transfer_change(full_rgb: np.ndarray, work_before: np.ndarray, work_after: np.ndarray,
                    mask_full: np.ndarray, method: str = "guided", **params) -> np.ndarray:
    """Full-resolution RGB whose foreground carries the change `work_before` -> `work_after`.

    full_rgb: float H x W x 3 in [0, 1]; work_before / work_after: float h x w x 3 in [0, 1] at work
    resolution (work_before is full_rgb resized); mask_full: bool H x W, True = foreground.
    Returns float32 H x W x 3 in [0, 1]; background pixels are exactly those of full_rgb.
    method "guided" (params: radius, eps, coarse_radius, smooth; see `fit_affine_field`) or "resize"
    (work_after resized up, bicubic: the detail-losing baseline).
    """
    full_rgb, work_before, work_after, mask_full = _check(full_rgb, work_before, work_after, mask_full)
    if method == "resize":
        if params:
            raise ZsharmError(f"method 'resize' takes no parameters, got {sorted(params)}")
        height, width = mask_full.shape
        new = np.clip(cv2.resize(work_after, (width, height), interpolation=cv2.INTER_CUBIC), 0, 1)
    elif method == "guided":
        work_wh = work_before.shape[1::-1]
        coverage = cv2.resize(mask_full.astype(np.float32), work_wh, interpolation=cv2.INTER_AREA)
        field = fit_affine_field(work_before, work_after, coverage, **params)
        new = apply_affine_field(field, full_rgb, mask_full)
    else:
        raise ZsharmError(f"unknown transfer method {method!r}; choose one of {', '.join(METHODS)}")
    np.copyto(new, full_rgb, where=~mask_full[..., None])  # background: the input, bit for bit
    return new


def fit_affine_field(before: np.ndarray, after: np.ndarray, coverage: np.ndarray, radius: int | None = None,
                     eps: float = 1e-4, coarse_radius: int | None = None, smooth: float | None = None) -> np.ndarray:
    """Per-pixel affine colour maps (h x w x 3 x 4: [A | b]) with after ~= A @ before + b on the foreground.

    coverage: h x w foreground fraction of each work pixel. Only fully covered pixels are fitted (partly
    covered ones mix in background, which the edit left alone); a mask too thin for any falls back to the
    coverage itself as weight. Pixels whose window holds no foreground take the nearest fitted coefficients.
    radius: window radius of the fine fit in work pixels (default long side / 128, at least 2).
    coarse_radius: that of the intermediate fit (default long side / 16).
    eps: ridge in units of colour variance, as in the guided filter, pulling each fit toward the coarser one.
    smooth: Gaussian sigma (work pixels, default radius / 2) applied to both images before fitting, so
        that fine detail the generator lost or invented (its autoencoder softens textures) is not read as a
        contrast change and taken out of the full-resolution detail.
    """
    before = before.astype(np.float64)
    after = after.astype(np.float64)
    long_side = max(before.shape[:2])
    radius = max(2, round(long_side / 128)) if radius is None else int(radius)
    coarse_radius = max(radius + 1, round(long_side / 16)) if coarse_radius is None else int(coarse_radius)
    smooth = radius / 2 if smooth is None else float(smooth)
    if radius < 1 or coarse_radius < 1 or not eps > 0:
        raise ZsharmError(f"transfer needs radius >= 1 and eps > 0, got radius {radius}, "
                          f"coarse_radius {coarse_radius}, eps {eps}")
    weight = (coverage >= 0.999).astype(np.float64)
    if weight.sum() == 0:
        weight = coverage.astype(np.float64)
    if smooth > 0:
        before = _masked_blur(before, weight, smooth)
        after = _masked_blur(after, weight, smooth)

    # A global fit first (slightly pulled toward "no change" so a flat foreground stays well posed).
    field = _fit_global(before, after, weight, eps)
    for r in (coarse_radius, radius):
        field = _fit_local(before, after, weight, r, eps, field)
    return field


def apply_affine_field(field: np.ndarray, full_rgb: np.ndarray, mask_full: np.ndarray) -> np.ndarray:
    """Upsample the h x w x 3 x 4 coefficient field bilinearly and apply it to full_rgb inside the bounding
    box of mask_full; returns float32 H x W x 3 in [0, 1] (outside the box: full_rgb)."""
    height, width = mask_full.shape
    field_h, field_w = field.shape[:2]
    rows = np.flatnonzero(mask_full.any(axis=1))
    cols = np.flatnonzero(mask_full.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # cv2.resize's pixel-centre convention: full pixel X sits at work coordinate (X + 0.5) * w / W - 0.5
    map_x = ((np.arange(left, right, dtype=np.float32) + 0.5) * (field_w / width) - 0.5)
    map_y = ((np.arange(top, bottom, dtype=np.float32) + 0.5) * (field_h / height) - 0.5)
    box_shape = (bottom - top, right - left)
    map_x = np.ascontiguousarray(np.broadcast_to(map_x, box_shape))
    map_y = np.ascontiguousarray(np.broadcast_to(map_y[:, None], box_shape))
    source = full_rgb[top:bottom, left:right]
    out = full_rgb.copy()
    for channel in range(3):
        coeffs = np.ascontiguousarray(field[:, :, channel, :], dtype=np.float32)
        coeffs = cv2.remap(coeffs, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        value = coeffs[..., 3] + coeffs[..., 0] * source[..., 0]
        value += coeffs[..., 1] * source[..., 1]
        value += coeffs[..., 2] * source[..., 2]
        out[top:bottom, left:right, channel] = np.clip(value, 0, 1)
    return out


# ---------------------------------------------------------------- fitting


def _fit_global(before, after, weight, eps):
    total = max(weight.sum(), 1e-12)
    mean_i = np.einsum("hw,hwc->c", weight, before) / total
    mean_p = np.einsum("hw,hwc->c", weight, after) / total
    di, dp = before - mean_i, after - mean_p
    cov_ii = np.einsum("hw,hwi,hwj->ij", weight, di, di)
    cov_pi = np.einsum("hw,hwi,hwj->ij", weight, dp, di)
    ridge = eps * total
    matrix = np.linalg.solve(cov_ii + ridge * np.eye(3), (cov_pi + ridge * np.eye(3)).T).T
    offset = mean_p - matrix @ mean_i
    affine = np.concatenate([matrix, offset[:, None]], axis=1)
    return np.broadcast_to(affine, before.shape[:2] + (3, 4)).copy()


def _fit_local(before, after, weight, radius, eps, prior):
    """Masked guided-filter fit in (2r+1)^2 windows, ridge toward `prior`, then masked averaging of the
    coefficients over the same windows (the guided filter's second box filter)."""
    h, w = weight.shape
    area = (2 * radius + 1) ** 2
    wi, wp = weight[..., None] * before, weight[..., None] * after
    planes = np.concatenate([
        weight[..., None], wi, wp,
        (wi[..., :, None] * before[..., None, :]).reshape(h, w, 9),
        (wp[..., :, None] * before[..., None, :]).reshape(h, w, 9),
    ], axis=2)
    sums = _box_sum(planes, radius)
    support = sums[..., 0]
    safe = np.maximum(support, 1e-12)[..., None]
    mean_i, mean_p = sums[..., 1:4] / safe, sums[..., 4:7] / safe
    scale = support[..., None, None]
    cov_ii = sums[..., 7:16].reshape(h, w, 3, 3) - scale * mean_i[..., :, None] * mean_i[..., None, :]
    cov_pi = sums[..., 16:25].reshape(h, w, 3, 3) - scale * mean_p[..., :, None] * mean_i[..., None, :]
    # ridge scaled by the window area: a window with little foreground leans on the prior
    ridge = eps * area
    prior_matrix = prior[..., :3]
    lhs = cov_ii + ridge * np.eye(3)
    rhs = cov_pi + ridge * prior_matrix
    matrix = np.linalg.solve(lhs, np.swapaxes(rhs, -1, -2)).swapaxes(-1, -2)  # A = rhs @ lhs^-1, lhs symmetric
    offset = mean_p - np.einsum("hwij,hwj->hwi", matrix, mean_i)
    affine = np.concatenate([matrix, offset[..., None]], axis=3)

    # Average the windows covering each pixel, each weighted by its foreground support.
    weighted = np.concatenate([support[..., None], support[..., None] * affine.reshape(h, w, 12)], axis=2)
    smoothed = _box_sum(weighted, radius)
    valid = smoothed[..., 0] > 1e-9
    affine = smoothed[..., 1:] / np.maximum(smoothed[..., :1], 1e-12)
    if not valid.all():
        # nearest supported pixel: background far from the foreground only feeds the upsampling at the rim
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        affine = affine[nearest[0], nearest[1]]
    return affine.reshape(h, w, 3, 4)


def _masked_blur(image, weight, sigma):
    blurred = cv2.GaussianBlur(image * weight[..., None], (0, 0), sigma)
    norm = cv2.GaussianBlur(weight, (0, 0), sigma)[..., None]
    return np.where(norm > 1e-6, blurred / np.maximum(norm, 1e-6), image)


def _box_sum(planes: np.ndarray, radius: int) -> np.ndarray:
    """Sum over (2r+1)^2 windows, counting only pixels inside the image."""
    size = 2 * radius + 1
    return cv2.boxFilter(planes, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)


def _check(full_rgb, work_before, work_after, mask_full):
    full_rgb = np.asarray(full_rgb, dtype=np.float32)
    work_before = np.asarray(work_before, dtype=np.float32)
    work_after = np.asarray(work_after, dtype=np.float32)
    mask_full = np.asarray(mask_full).astype(bool)
    if full_rgb.ndim != 3 or full_rgb.shape[2] != 3:
        raise ZsharmError(f"full-resolution image must be H x W x 3, got {full_rgb.shape}")
    if mask_full.shape != full_rgb.shape[:2]:
        raise ZsharmError(f"mask is {mask_full.shape}, the image {full_rgb.shape[:2]}")
    if work_before.ndim != 3 or work_before.shape[2] != 3 or work_after.shape != work_before.shape:
        raise ZsharmError(f"work images must be two h x w x 3 arrays of one size, got "
                          f"{work_before.shape} and {work_after.shape}")
    for name, array in (("full-resolution image", full_rgb), ("work image before", work_before),
                        ("work image after", work_after)):
        if not np.isfinite(array).all():
            raise ZsharmError(f"{name} holds NaN or infinite values")
    if not mask_full.any():
        raise ZsharmError("mask has no foreground: nothing to transfer")
    return full_rgb, work_before, work_after, mask_full
