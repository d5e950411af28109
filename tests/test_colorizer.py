"""The Python API: Colorizer.load() once, colorize() any photo given as a path, a PIL image or an array."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import colorizer as colorizer_module
from colorize_base import Colorizer
from conftest import REPO, photo

EXAMPLE = os.path.join(REPO, "examples", "bsds_100007_gray.jpg")


@pytest.fixture(scope="module")
def bundled():
    return Colorizer.load(device="cpu")


def test_the_bundled_model_loads_and_colorizes_an_example_from_a_path(bundled):
    out = bundled.colorize(EXAMPLE)
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == Image.open(EXAMPLE).size
    rgb = np.asarray(out, dtype=np.float32)
    assert np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean() > 1  # it has colour


def test_path_pil_image_and_arrays_give_the_same_colours(bundled):
    img = Image.open(EXAMPLE).convert("RGB")
    u8 = np.asarray(img)
    expected = np.asarray(bundled.colorize(EXAMPLE))
    for given in (img, u8, u8[..., 0], u8.astype(np.float32) / 255, u8[..., 0].astype(np.float64) / 255):
        assert np.array_equal(np.asarray(bundled.colorize(given)), expected), type(given)


def test_render_size_is_a_per_call_choice(bundled):
    a = np.asarray(bundled.colorize(EXAMPLE, render_size=128), dtype=np.float32)
    b = np.asarray(bundled.colorize(EXAMPLE), dtype=np.float32)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.1  # the network saw another size
    with pytest.raises(ValueError, match="render_size"):
        bundled.colorize(EXAMPLE, render_size=0)


def test_bad_arrays_are_refused_with_the_reason(bundled):
    with pytest.raises(ValueError, match="shape"):
        bundled.colorize(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        bundled.colorize(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="NaN"):
        bundled.colorize(np.full((4, 4), np.nan, np.float32))


def test_bands_give_the_same_result_as_one_piece(weights, monkeypatch):
    """A photo several times the render size, with sides that are no multiple of anything: working in
    many bands of rows must give the result of working on the whole photo at once."""
    colorizer = Colorizer.load(weights, device="cpu", render_size=32)
    rgb = photo(203, 141, seed=3)
    whole = np.asarray(colorizer.colorize(rgb))
    monkeypatch.setattr(colorizer_module, "BAND_PIXELS", 203 * 7)  # bands of 7 rows
    banded = np.asarray(colorizer.colorize(rgb))
    assert whole.shape == banded.shape == (141, 203, 3)
    assert np.abs(whole.astype(int) - banded).max() <= 1  # float rounding in a different order


def test_bands_of_a_32_bit_gray_image_share_one_scale(weights, monkeypatch):
    """Values above 255 only in the bottom rows still make the whole image 16-bit scaled."""
    colorizer = Colorizer.load(weights, device="cpu", render_size=32)
    values = np.full((60, 40), 200, np.int32)
    values[50:] = 60000
    img = Image.fromarray(values, mode="I")
    whole = np.asarray(colorizer.colorize(img))
    monkeypatch.setattr(colorizer_module, "BAND_PIXELS", 40 * 10)  # the top bands hold only 200s
    assert np.array_equal(np.asarray(colorizer.colorize(img)), whole)
    assert whole[:40].mean() < 40  # 200 of 65535 is near black, not 200 of 255


@pytest.mark.parametrize("n_in, n_out", [(9, 40), (40, 9), (7, 7), (64, 5), (5, 64), (1, 3), (3, 1), (100, 37)])
def test_numpy_resampling_matches_torch(n_in, n_out):
    """The pipeline's numpy resamplers compute what torch does (the torch-free install must colorize
    as the torch one did): bilinear with half-pixel centres, also made a few rows at a time, and
    adaptive average pooling with its overlapping windows."""
    x = torch.randn(1, 2, n_in, n_in + 3)
    full = F.interpolate(x, size=(n_out, n_in + 3), mode="bilinear", align_corners=False).numpy()
    assert colorizer_module.linear_resize(x.numpy(), n_out, axis=2).dtype == np.float32  # never float64: memory
    assert colorizer_module.area_resize(x.numpy(), n_out, axis=2).dtype == np.float32
    assert np.allclose(colorizer_module.linear_resize(x.numpy(), n_out, axis=2), full, atol=1e-5)
    parts = [colorizer_module.linear_resize(x.numpy(), n_out, axis=2, rows=(y0, min(n_out, y0 + 7)))
             for y0 in range(0, n_out, 7)]
    assert np.allclose(np.concatenate(parts, axis=2), full, atol=1e-5)
    wide = F.interpolate(x, size=(n_in, n_out), mode="bilinear", align_corners=False).numpy()
    assert np.allclose(colorizer_module.linear_resize(x.numpy(), n_out, axis=3), wide, atol=1e-5)
    pooled = F.adaptive_avg_pool2d(x, (n_out, n_in + 3)).numpy()
    assert np.allclose(colorizer_module.area_resize(x.numpy(), n_out, axis=2), pooled, atol=1e-5)
    pooled = F.adaptive_avg_pool2d(x, (n_in, n_out)).numpy()
    assert np.allclose(colorizer_module.area_resize(x.numpy(), n_out, axis=3), pooled, atol=1e-5)


def test_readme_python_one_liner_works_from_the_repo_root():
    code = f"from colorize_base import Colorizer; print(Colorizer.load().colorize({os.path.relpath(EXAMPLE, REPO)!r}).size)"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(Image.open(EXAMPLE).size)


def test_saturation_scales_the_predicted_colour_in_lab(bundled):
    from images import rgb_to_lab

    def ab(img):
        rgb = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
        return rgb_to_lab(rgb)[0, 1:]
    base, double, none = (ab(bundled.colorize(EXAMPLE, saturation=s)) for s in (1.0, 2.0, 0.0))
    assert none.abs().max() < 1.5                                      # 0: the gray photo (up to 8-bit rounding)
    assert double.norm(dim=0).mean() > 1.6 * base.norm(dim=0).mean()   # 2: about twice the chroma, less where clipped
    for bad in (-0.5, float("nan"), "more"):
        with pytest.raises(ValueError, match="saturation must be"):
            bundled.colorize(EXAMPLE, saturation=bad)


def test_load_defaults_are_the_constants():
    """Colorizer.load takes its defaults as arguments (no import of colorize_base): they must stay
    the constants' values, so the Python API colours as the command line does."""
    import inspect

    import colorize_base as cb
    defaults = {k: p.default for k, p in inspect.signature(Colorizer.load).parameters.items()}
    assert defaults["weights"] == cb.resolve_path(cb.WEIGHTS)
    assert (defaults["render_size"], defaults["max_pixels"], defaults["saturation"]) == \
        (cb.RENDER_SIZE, cb.MAX_PIXELS, cb.SATURATION)
    assert (defaults["device"], defaults["backend"], defaults["threads"]) == (cb.DEVICE, cb.BACKEND, cb.THREADS)


def test_lab_conversion_is_one_definition_for_arrays_and_tensors():
    """images.py's Lab runs on numpy arrays (inference, the torch-free install) and torch tensors
    (training): the same numbers either way, and rgb_to_L is rgb_to_lab's L."""
    from images import lab_to_rgb, rgb_to_L, rgb_to_lab
    rgb = np.random.default_rng(0).random((2, 3, 16, 24), dtype=np.float32)
    lab = rgb_to_lab(rgb)
    assert lab.dtype == np.float32 and rgb_to_L(rgb).dtype == np.float32
    assert np.allclose(lab, rgb_to_lab(torch.from_numpy(rgb)).numpy(), atol=1e-4)
    assert np.array_equal(rgb_to_L(rgb), lab[:, :1])
    assert np.allclose(lab_to_rgb(lab), lab_to_rgb(torch.from_numpy(lab)).numpy(), atol=1e-5)
    assert np.allclose(lab_to_rgb(lab), rgb, atol=1e-4)


def test_bands_run_on_threads_in_order_and_a_few_at_a_time():
    import threading
    running, most = [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        threading.Event().wait(0.01)
        with lock:
            running[0] -= 1
        return i * i

    assert list(colorizer_module.in_parallel(work, list(range(12)), 3)) == [i * i for i in range(12)]
    assert 1 < most[0] <= 3
    assert list(colorizer_module.in_parallel(work, [5], 3)) == [25]


def test_threads_change_no_pixel(bundled, monkeypatch):
    img = Image.open(EXAMPLE)
    monkeypatch.setattr(colorizer_module, "BAND_PIXELS", 481 * 20)  # 17 bands
    one = np.asarray(bundled.colorize(img))
    monkeypatch.setattr(type(bundled.network), "threads", property(lambda self: 4))
    assert np.array_equal(np.asarray(bundled.colorize(img)), one)
