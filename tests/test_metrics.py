import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from zsharm.errors import ZsharmError
from zsharm.quality.metrics import binary_mask, fmse, fpsnr, measure, mse, psnr, ssim


def _pair():
    """2x2 RGB truth of zeros; the result is off by 10 in every channel of pixel (0, 0) and by 4 in the
    red channel of pixel (1, 1). Foreground: pixels (0, 0) and (0, 1)."""
    truth = np.zeros((2, 2, 3), np.uint8)
    result = truth.copy()
    result[0, 0] = 10
    result[1, 1, 0] = 4
    mask = np.array([[True, True], [False, False]])
    return result, truth, mask


def test_mse_and_fmse_by_hand():
    result, truth, mask = _pair()
    # all 12 values: 3 * 10^2 + 4^2 = 316 over 12
    assert mse(result, truth) == pytest.approx(316 / 12)
    # foreground: 2 pixels * 3 channels = 6 values, squared error 300
    assert fmse(result, truth, mask) == pytest.approx(300 / 6)
    assert mse(result, truth, mask) == fmse(result, truth, mask)


def test_psnr_and_fpsnr_by_hand():
    result, truth, mask = _pair()
    assert psnr(result, truth) == pytest.approx(10 * math.log10(255**2 / (316 / 12 + 1e-6)))
    assert fpsnr(result, truth, mask) == pytest.approx(10 * math.log10(255**2 / 50.000001))
    # identical images stay finite (the field's 1e-6): 10 log10(65025 / 1e-6) = 108.13 dB
    assert psnr(truth, truth) == pytest.approx(108.1308, abs=1e-3)


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # flat images have no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1), C1 = (0.01 * 255)^2
    a = np.full((16, 20, 3), 100, np.uint8)
    b = np.full((16, 20, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), rel=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


def test_ssim_matches_scikit_image_and_masks_its_map():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    kwargs = dict(data_range=255, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(a, b) == pytest.approx(structural_similarity(a.astype(float), b.astype(float), **kwargs))
    mask = np.zeros((24, 32), bool)
    mask[4:12, 5:20] = True
    _, smap = structural_similarity(a.astype(float), b.astype(float), full=True, **kwargs)
    assert ssim(a, b, mask) == pytest.approx(smap.mean(axis=2)[mask].mean())


def test_fmse_does_not_shrink_with_the_background():
    """The reason DoveNet introduced fMSE: MSE falls as the background grows, fMSE does not."""
    result, truth, mask = _pair()
    wide = lambda x, fill: np.pad(x, ((0, 0), (0, 6), (0, 0)) if x.ndim == 3 else ((0, 0), (0, 6)), constant_values=fill)
    big_result, big_truth, big_mask = wide(result, 0), wide(truth, 0), wide(mask, False)
    assert fmse(big_result, big_truth, big_mask) == pytest.approx(fmse(result, truth, mask))
    assert mse(big_result, big_truth) < mse(result, truth)


def test_masks_in_any_common_encoding_agree():
    m = np.array([[1, 0], [0, 1]])
    expected = m.astype(bool)
    for encoded in (expected, m * 255, m.astype(np.uint8) * 255, m.astype(float), np.dstack([m * 255] * 3)):
        assert (binary_mask(encoded) == expected).all()


def test_measure_gives_all_six_numbers():
    result, truth, mask = _pair()
    result, truth = np.tile(result, (6, 6, 1)), np.tile(truth, (6, 6, 1))
    mask = np.tile(mask, (6, 6))
    numbers = measure(result, truth, mask)
    assert set(numbers) == {"mse", "fmse", "psnr", "fpsnr", "ssim", "fedge"}
    assert numbers["fmse"] == pytest.approx(50.0)


def test_the_edge_error_ignores_a_colour_shift_and_sees_a_moved_edge():
    from zsharm.quality.metrics import edge_error
    truth = np.zeros((32, 32, 3), np.uint8)
    truth[:, 16:] = 200
    mask = np.ones((32, 32), bool)
    brighter = truth.copy()
    brighter[:, 16:] = 230
    shifted = np.zeros_like(truth)
    shifted[:, 20:] = 200
    assert edge_error(truth, truth, mask) == 0
    assert edge_error(np.clip(truth.astype(int) + 20, 0, 255).astype(np.uint8), truth, mask) == 0
    assert edge_error(shifted, truth, mask) > 5 * edge_error(brighter, truth, mask)


@pytest.mark.parametrize("call", [
    lambda a, b, m: mse(a, b[:1]),                         # shapes differ
    lambda a, b, m: fmse(a, b, np.zeros((2, 2), bool)),    # empty foreground
    lambda a, b, m: fmse(a, b, None),                      # fMSE needs a mask
    lambda a, b, m: mse(a, b, np.ones((3, 3), bool)),      # mask of another size
    lambda a, b, m: mse(a.astype(float) * np.nan, b),      # NaN
    lambda a, b, m: ssim(a, b),                            # smaller than SSIM's 11x11 window
])
def test_bad_inputs_are_one_line_errors(call):
    result, truth, mask = _pair()
    with pytest.raises(ZsharmError) as error:
        call(result, truth, mask)
    assert "\n" not in str(error.value)
