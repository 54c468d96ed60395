"""Image-harmonization metrics as the field computes them (iHarmony4 / DoveNet / iDIH / PCT-Net).

Convention: images are HxWx3 arrays on the 0-255 scale (uint8, or floats already on that scale); the
error is averaged over pixels *and* channels.

- MSE   = mean over all H*W*3 values of (result - truth)^2.
- fMSE  = the same restricted to the foreground: sum over foreground pixels and channels of the squared
          error / (foreground pixel count * 3). DoveNet introduced it because MSE shrinks with the
          foreground's area; it is what MSE would be on the foreground alone.
- PSNR  = 10 * log10(255^2 / (MSE + 1e-6)); fPSNR the same from fMSE. The 1e-6 is the field's (it keeps
          identical images finite: about 108 dB) and keeps per-method means finite.
- fEdge = the structure error inside the mask (zsharm's, not the field's): the mean absolute difference of
          the Sobel gradient magnitudes of the grey images (0-255 scale) over foreground pixels. Colour and
          brightness barely move it; a changed shape, lost texture or a moved highlight does.
- SSIM  = scikit-image's structural_similarity over the colour image (data_range 255, Gaussian window
          as Wang et al. 2004); with a mask, the mean of the SSIM map over the foreground.

Every function takes an optional mask (bool HxW, or 0/1 or 0-255 numbers) and then measures the
foreground only, so `mse(a, b, mask) == fmse(a, b, mask)`.
"""

import math

import numpy as np

from zsharm.errors import ZsharmError

EPS = 1e-6
PEAK = 255.0


def binary_mask(mask) -> np.ndarray:
    """A mask as bool HxW (its first channel): zsharm.io.masks.as_foreground, the paper's 100/255 of full scale."""
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    if m.ndim != 2:
        raise ZsharmError(f"a mask must be HxW, got shape {m.shape}")
    from zsharm.io.masks import as_foreground
    return as_foreground(m)


def _pair(result, truth, mask=None):
    a = np.asarray(result, dtype=np.float64)
    b = np.asarray(truth, dtype=np.float64)
    if a.shape != b.shape:
        raise ZsharmError(f"result and ground truth differ in shape: {a.shape} vs {b.shape}")
    if a.ndim != 3:
        raise ZsharmError(f"images must be HxWxC, got shape {a.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ZsharmError("an image holds NaN or infinite values")
    if mask is None:
        return a, b, None
    m = binary_mask(mask)
    if m.shape != a.shape[:2]:
        raise ZsharmError(f"mask shape {m.shape} does not match image shape {a.shape[:2]}")
    if not m.any():
        raise ZsharmError("the mask is empty: no foreground to measure")
    return a, b, m


def mse(result, truth, mask=None) -> float:
    """Mean squared error over all values (0-255 scale); over the foreground only when a mask is given."""
    a, b, m = _pair(result, truth, mask)
    err = (a - b) ** 2
    if m is None:
        return float(err.mean())
    return float(err[m].sum() / (m.sum() * a.shape[2]))


def fmse(result, truth, mask) -> float:
    """Foreground MSE: squared error summed over foreground pixels and channels / (pixels * channels)."""
    if mask is None:
        raise ZsharmError("fMSE needs a foreground mask")
    return mse(result, truth, mask)


def _to_psnr(err: float) -> float:
    return 10.0 * math.log10(PEAK**2 / (err + EPS))


def psnr(result, truth, mask=None) -> float:
    """PSNR in dB from MSE (peak 255)."""
    return _to_psnr(mse(result, truth, mask))


def fpsnr(result, truth, mask) -> float:
    """Foreground PSNR in dB, from fMSE."""
    return _to_psnr(fmse(result, truth, mask))


def ssim(result, truth, mask=None) -> float:
    """Structural similarity (scikit-image, Gaussian window, data_range 255) over the colour image;
    with a mask, the mean of the SSIM map over the foreground."""
    from skimage.metrics import structural_similarity

    a, b, m = _pair(result, truth, mask)
    if min(a.shape[:2]) < 11:  # the Gaussian window (sigma 1.5, truncated at 3.5 sigma) is 11x11
        raise ZsharmError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[1]}x{a.shape[0]}")
    kwargs = dict(data_range=PEAK, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    if m is None:
        return float(structural_similarity(a, b, **kwargs))
    _, smap = structural_similarity(a, b, full=True, **kwargs)
    return float(smap.mean(axis=2)[m].mean())


def edge_error(result, truth, mask) -> float:
    """fEdge: mean |Sobel magnitude(result) - Sobel magnitude(truth)| of the grey images over the foreground."""
    import cv2
    a, b, m = _pair(result, truth, mask)
    m = m if m is not None else np.ones(a.shape[:2], bool)

    def magnitude(image):
        grey = image.astype(np.float32).mean(axis=2)
        return np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)) / 8

    return float(np.abs(magnitude(a) - magnitude(b))[m].mean())


METRICS = {"mse": mse, "fmse": fmse, "psnr": psnr, "fpsnr": fpsnr, "ssim": ssim, "fedge": edge_error}


def measure(result, truth, mask) -> dict:
    """All six numbers for one image: mse, fmse, psnr, fpsnr, fedge (foreground from `mask`) and ssim (whole
    image)."""
    return {
        "mse": mse(result, truth),
        "fmse": fmse(result, truth, mask),
        "psnr": psnr(result, truth),
        "fpsnr": fpsnr(result, truth, mask),
        "ssim": ssim(result, truth),
        "fedge": edge_error(result, truth, mask),
    }
