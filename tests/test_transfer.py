"""The full-resolution transfer: a known smooth colour change seen only at work resolution must come back at
full resolution with the fine detail that a plain resize loses, and the background must not move a bit."""

import cv2
import numpy as np
import pytest
from skimage import data

from zsharm.errors import ZsharmError
from zsharm.io.pictures import work_size
from zsharm.edit.transfer import transfer_change

GAIN = np.array([1.1, 0.95, 0.8], np.float32)
GAMMA = np.array([0.8, 1.0, 1.25], np.float32)


def known_change(rgb: np.ndarray) -> np.ndarray:
    """Per-channel gain and gamma under an exposure ramp from left to right: a smooth, nonlinear change."""
    height, width = rgb.shape[:2]
    x = (np.arange(width, dtype=np.float32) + 0.5) / width  # pixel centres, so both resolutions agree
    ramp = (0.8 + 0.35 * x)[None, :, None]
    return np.clip(ramp * GAIN * rgb ** GAMMA, 0, 1).astype(np.float32)


def scene(name: str, long_side: int, size=None):
    photo = getattr(data, name)().astype(np.float32) / 255
    height, width = photo.shape[:2]
    if size is None:
        scale = long_side / max(height, width)
        size = (round(width * scale), round(height * scale))
    return np.clip(cv2.resize(photo, size, interpolation=cv2.INTER_CUBIC), 0, 1)


def ellipse(height, width, cy=0.55, cx=0.5, ry=0.35, rx=0.3):
    yy, xx = np.mgrid[:height, :width]
    return ((yy - height * cy) / (height * ry)) ** 2 + ((xx - width * cx) / (width * rx)) ** 2 < 1


def work_pair(full, mask, change, long_side=256):
    """What the diffusion stage sees and returns: the image at work resolution, and its edit blended back
    into the untouched background with the work-resolution mask."""
    height, width = mask.shape
    size = work_size((width, height), long_side)
    before = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
    work_mask = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 100 / 255
    after = np.where(work_mask[..., None], change(before), before)
    return before, after


def truth_of(full, mask, change):
    return np.where(mask[..., None], change(full), full)


def psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def high_pass(image):
    return image - cv2.GaussianBlur(image, (0, 0), 2.0)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_guided_transfer_matches_truth_and_keeps_detail(name):
    full = scene(name, 1000)
    mask = ellipse(*full.shape[:2])
    before, after = work_pair(full, mask, known_change)
    truth = truth_of(full, mask, known_change)
    guided = transfer_change(full, before, after, mask)
    resized = transfer_change(full, before, after, mask, method="resize")

    for out in (guided, resized):
        assert out.shape == full.shape and out.dtype == np.float32
        np.testing.assert_array_equal(out[~mask], full[~mask])
    assert psnr(guided[mask], truth[mask]) >= 35
    detail_truth = high_pass(truth)[mask]
    detail_guided, detail_resized = high_pass(guided)[mask], high_pass(resized)[mask]
    # the fine band itself: guided follows it closely, a resize has lost it
    assert psnr(detail_guided, detail_truth) >= psnr(detail_resized, detail_truth) + 10
    energy = np.mean(detail_truth ** 2)
    assert 0.9 < np.mean(detail_guided ** 2) / energy < 1.1
    assert np.mean(detail_resized ** 2) / energy < 0.5


def test_no_change_and_a_global_affine_change_are_reproduced():
    full = scene("chelsea", 600)
    mask = ellipse(*full.shape[:2])
    before, after = work_pair(full, mask, lambda rgb: rgb)
    out = transfer_change(full, before, after, mask)
    assert np.abs(out - full).max() < 1e-4

    matrix = np.array([[0.7, 0.1, 0.05], [0.05, 0.6, 0.1], [0.1, 0.15, 0.55]], np.float32)
    offset = np.array([0.04, 0.08, 0.1], np.float32)

    def affine(rgb):
        return rgb @ matrix.T + offset  # stays inside [0, 1]: no clipping to break the model

    before, after = work_pair(full, mask, affine)
    out = transfer_change(full, before, after, mask)
    assert np.abs(out - truth_of(full, mask, affine)).max() < 2e-3


def test_odd_size_with_mask_on_the_border():
    full = scene("coffee", None, size=(333, 517))  # W x H, squeezed: the work grid's aspect differs too
    height, width = full.shape[:2]
    mask = ellipse(height, width, cy=0.8, cx=0.15, ry=0.4, rx=0.35)  # runs off the left and bottom edges
    assert mask[:, 0].any() and mask[-1].any()
    before, after = work_pair(full, mask, known_change)
    out = transfer_change(full, before, after, mask)
    assert out.shape == (517, 333, 3)
    np.testing.assert_array_equal(out[~mask], full[~mask])
    truth = truth_of(full, mask, known_change)
    assert psnr(out[mask], truth[mask]) >= 35


def test_background_does_not_bleed_into_the_foreground_rim():
    # The background is the same photo, left unchanged by the edit: windows straddling the mask edge would
    # read "no change" from it and under-correct the rim (fitting on every pixel scores about 33 dB here).
    full = scene("astronaut", 800)
    height, width = full.shape[:2]
    mask = ellipse(height, width, cx=0.7, rx=0.3)
    mask[:, : width // 2] = False  # a straight foreground edge down the middle
    before, after = work_pair(full, mask, known_change)
    out = transfer_change(full, before, after, mask)
    truth = truth_of(full, mask, known_change)
    rim = mask & (np.arange(width) < width // 2 + 12)[None, :]  # foreground within 12 px of the edge
    assert rim.sum() > 1000
    assert psnr(out[rim], truth[rim]) >= 40


def test_thin_foreground_still_changes_the_right_way():
    full = scene("coffee", 700)
    mask = np.zeros(full.shape[:2], bool)
    mask[100:400, 300] = True  # one pixel wide: no work pixel is covered fully
    size = work_size(full.shape[1::-1], 256)
    before = cv2.resize(full, size, interpolation=cv2.INTER_AREA)
    touched = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0
    after = np.where(touched[..., None], before * 0.6, before)
    out = transfer_change(full, before, after, mask)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(out[~mask], full[~mask])
    assert out[mask].mean() < 0.9 * full[mask].mean()


def test_bad_inputs_give_one_line():
    full = np.zeros((40, 30, 3), np.float32)
    mask = np.zeros((40, 30), bool)
    mask[10:20, 10:20] = True
    work = np.zeros((64, 64, 3), np.float32)
    nan = work.copy()
    nan[3, 3, 1] = np.nan
    cases = [
        ((full, work, nan, mask), {}, "NaN"),
        ((full, work, work[:32], mask), {}, "work images"),
        ((full, work, work, mask[:20]), {}, "mask"),
        ((full, work, work, np.zeros_like(mask)), {}, "no foreground"),
        ((full, work, work, mask), {"method": "magic"}, "magic"),
        ((full, work, work, mask), {"radius": 0}, "radius"),
    ]
    for args, kwargs, word in cases:
        with pytest.raises(ZsharmError) as error:
            transfer_change(*args, **kwargs)
        assert word in str(error.value) and "\n" not in str(error.value)
