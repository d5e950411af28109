"""Each metric against a known value, on tiny images."""
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

import metrics


def photo(h=16, w=20, seed=0):
    return np.random.default_rng(seed).random((h, w, 3))


def test_psnr_of_identical_images_is_capped():
    x = photo()
    assert metrics.psnr(x, x.copy()) == metrics.PSNR_CAP


def test_psnr_known_value():
    x = np.full((8, 8, 3), 0.5)
    y = x + 0.1  # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB
    assert metrics.psnr(y, x) == pytest.approx(20.0)
    z = photo(seed=1)
    assert metrics.psnr(z, photo()) == pytest.approx(peak_signal_noise_ratio(photo(), z, data_range=1.0))


def test_ssim_of_identical_images_is_one_and_lower_otherwise():
    x = photo()
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim(photo(seed=1), x) < 0.5


def test_ssim_small_images_use_a_smaller_window():
    x = photo(5, 4)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert np.isnan(metrics.ssim(photo(2, 8), photo(2, 8)))  # undefined below 3 pixels: NaN, not a failure


def ciede2000(pred, truth):
    return metrics.image_metrics(pred, truth)["ciede2000"]


def false_colour(pred, truth):
    return metrics.image_metrics(pred, truth)["false_colour"]


def test_ciede2000_identical_is_zero_and_black_white_is_100():
    x = photo()
    assert ciede2000(x, x) == pytest.approx(0.0, abs=1e-9)
    black, white = np.zeros((4, 4, 3)), np.ones((4, 4, 3))
    assert ciede2000(black, white) == pytest.approx(100.0, abs=1e-3)  # L 0 -> 100, no chroma


def test_colorfulness_of_gray_is_zero():
    gray = np.repeat(np.random.default_rng(0).random((10, 12, 1)), 3, axis=2)
    assert metrics.colorfulness(gray) == pytest.approx(0.0)


def test_colorfulness_known_value():
    red = np.zeros((4, 4, 3))
    red[..., 0] = 1.0  # rg = 255, yb = 127.5, no spread: CF = 0.3 * sqrt(255^2 + 127.5^2)
    assert metrics.colorfulness(red) == pytest.approx(0.3 * np.hypot(255, 127.5))
    half = red.copy()
    half[:2] = 0  # rg and yb are 0 or (255, 127.5), half each
    expected = np.hypot(127.5, 63.75) + 0.3 * np.hypot(127.5, 63.75)
    assert metrics.colorfulness(half) == pytest.approx(expected)


def test_colorfulness_gap():
    ratio, diff = metrics.colorfulness_gap([10.0, 20.0], [30.0, 30.0])
    assert ratio == pytest.approx(0.5) and diff == pytest.approx(15.0)
    with pytest.raises(ValueError, match="zero"):
        metrics.colorfulness_gap([1.0], [0.0])


def test_shape_mismatch_names_the_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        metrics.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))


def test_false_colour_counts_colour_painted_on_white_and_gray_only():
    truth = np.full((10, 20, 3), 0.9)  # left half white, right half saturated red
    truth[:, 10:] = (0.9, 0.1, 0.1)
    assert false_colour(truth, truth) == 0
    pink = truth.copy()
    pink[:4, :10] = (1.0, 0.6, 0.7)  # 4 of the 10 white rows painted pink
    assert false_colour(pink, truth) == pytest.approx(40)
    recoloured = truth.copy()
    recoloured[:, 10:] = (0.1, 0.1, 0.9)  # a wrong colour on a coloured thing is not false colour
    assert false_colour(recoloured, truth) == 0
    dark = np.full((10, 10, 3), 0.1)  # no light neutral pixels: undefined, not a success
    assert np.isnan(false_colour(dark + (0.5, 0, 0), dark))
