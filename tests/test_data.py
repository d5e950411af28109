"""Lab conversion against scikit-image, image discovery and the training-set scan."""
import os
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import color

from conftest import write_png16
from data import ColorizationDataset, expose, mosaic, scan_images, split_files, to_net_input
from images import find_images, lab_to_net, lab_to_rgb, load_image, net_to_lab, rgb_to_lab, srgb_to_linear


def test_rgb_to_lab_matches_skimage():
    rng = np.random.default_rng(0)
    rgb = rng.random((16, 16, 3))
    rgb[0, :4] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 1]]  # extremes
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - color.rgb2lab(rgb)).max() < 1e-3


def test_lab_to_rgb_matches_skimage_including_out_of_gamut():
    rng = np.random.default_rng(1)
    lab = np.stack([rng.uniform(0, 100, (16, 16)), rng.uniform(-110, 110, (16, 16)),
                    rng.uniform(-110, 110, (16, 16))], axis=2)
    ours = lab_to_rgb(torch.from_numpy(lab).permute(2, 0, 1)[None].float())[0].permute(1, 2, 0).numpy()
    with pytest.warns(UserWarning):  # skimage warns about negative Z values it clips, as we do
        ref = color.lab2rgb(lab)
    assert np.abs(ours - ref).max() < 1e-3


def test_lab_round_trip():
    rgb = torch.rand(2, 3, 8, 8)
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-4


def test_network_scaling_is_inverted_and_clamped():
    lab = rgb_to_lab(torch.rand(2, 3, 8, 8))
    real_A, real_B = lab_to_net(lab)
    assert real_A.min() >= -1 and real_A.max() <= 1
    assert torch.allclose(net_to_lab(real_A, real_B), lab, atol=1e-5)
    assert net_to_lab(real_A, torch.full_like(real_B, 5.0))[:, 1:].max() == 110  # clamped


def _colour(path, size=(40, 30)):
    rng = np.random.default_rng(zlib.crc32(os.path.basename(str(path)).encode()))  # the same images every run
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_find_images_recursive_any_case(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["x.JPG", "a/y.png", "a/b/z.TiFF", "a/notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    found = [p.replace(str(tmp_path) + "/", "") for p in find_images([tmp_path])]
    assert found == ["a/b/z.TiFF", "a/y.png", "x.JPG"]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        find_images([tmp_path / "nothing_here"])


def test_scan_skips_corrupt_and_grayscale(tmp_path):
    _colour(tmp_path / "good1.png")
    _colour(tmp_path / "good2.jpg")
    Image.new("L", (40, 30), 128).save(tmp_path / "gray_l.png")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "gray_rgb.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"not an image at all")
    warnings = []
    good, n_bad, n_gray = scan_images([tmp_path], 10**8, log=warnings.append)
    assert [p.split("/")[-1] for p in good] == ["good1.png", "good2.jpg"]
    assert (n_bad, n_gray) == (1, 2)
    assert len(warnings) == 1 and "corrupt.jpg" in warnings[0]


def test_dataset_crops_uint8(tmp_path):
    _colour(tmp_path / "a.png", (50, 35))
    ds = ColorizationDataset([str(tmp_path / "a.png")], 32)
    x = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.uint8


def test_load_image_modes(tmp_path):
    Image.new("RGBA", (8, 6), (255, 0, 0, 100)).save(tmp_path / "rgba.png")
    rgb, alpha = load_image(str(tmp_path / "rgba.png"))
    assert rgb.shape == (6, 8, 3) and alpha.shape == (6, 8) and abs(alpha[0, 0] - 100 / 255) < 1e-6


def test_16_bit_values_are_read_at_16_bit_scale(tmp_path):
    """Values that reveal the scale: a quarter and a half of 16-bit white are 0.25 and 0.5, not the
    white that reading them at 8-bit scale would give."""
    gray16 = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    rgb, alpha = load_image(str(tmp_path / "g16.png"))
    assert alpha is None and np.abs(rgb - (gray16 / 65535)[..., None]).max() < 1e-6  # gray, full precision
    write_png16(str(tmp_path / "rgb16.png"), np.array([[[13107, 32768, 52428]]], dtype=np.uint16))
    rgb, _ = load_image(str(tmp_path / "rgb16.png"))
    assert np.abs(rgb[0, 0] - [0.2, 0.5, 0.8]).max() < 1 / 255  # Pillow keeps 8 of the 16 bits of RGB


def test_mosaic_tiles_four_half_size_images_of_the_batch():
    batch = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 3, 8, 6) / 10  # image i is flat i/10
    assert mosaic(batch, 0.0) is batch
    out = mosaic(batch, 1.0)
    assert out.shape == batch.shape and torch.equal(batch[0], torch.full((3, 8, 6), 0.0))  # input untouched
    for i in range(5):  # top-left: itself; then the next three images of the batch, cyclically
        quads = [out[i, :, :4, :3], out[i, :, :4, 3:], out[i, :, 4:, :3], out[i, :, 4:, 3:]]
        assert [round(q.unique().item(), 4) for q in quads] == [((i + k) % 5) / 10 for k in range(4)]
    g = torch.Generator().manual_seed(0)
    some = mosaic(torch.rand(400, 3, 4, 4), 0.25, g)
    assert some.shape == (400, 3, 4, 4)
    with pytest.raises(ValueError, match="even"):
        mosaic(torch.rand(2, 3, 5, 4), 1.0)


def test_expose_scales_linear_light_keeps_neutrals_neutral_and_clips():
    gray = torch.full((64, 3, 2, 2), 0.5)
    assert torch.allclose(expose(gray, 0.0), gray, atol=1e-6)  # 0 stops: unchanged
    g = torch.Generator().manual_seed(0)
    out = expose(gray, 1.0, g)
    gain = srgb_to_linear(out[:, 0, 0, 0]) / srgb_to_linear(torch.tensor(0.5))
    assert gain.min() >= 0.5 - 1e-5 and gain.max() <= 2 + 1e-5  # within one stop either way
    assert gain.min() < 0.7 and gain.max() > 1.4  # and spread over the range
    assert torch.allclose(rgb_to_lab(out)[:, 1:], torch.zeros(64, 2, 2, 2), atol=0.01)  # gray stays gray
    colour = torch.tensor([0.6, 0.4, 0.2]).view(1, 3, 1, 1).expand(64, 3, 2, 2)
    lin = srgb_to_linear(expose(colour, 1.0, torch.Generator().manual_seed(0)))
    ratio = lin / srgb_to_linear(colour)
    assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), atol=1e-4)  # one gain for all three channels
    assert expose(torch.ones(4, 3, 2, 2), 3.0).max() <= 1  # brightened white is clipped, not above 1


def test_target_saturation_scales_the_true_colour_and_keeps_gray_gray():
    batch = torch.tensor([[200, 60, 40], [128, 128, 128], [40, 200, 255]], dtype=torch.uint8).view(1, 3, 3, 1)
    batch = batch.permute(0, 2, 1, 3).expand(1, 3, 3, 4).contiguous()        # a red, a gray and a cyan row
    A, B = to_net_input(batch, "cpu")
    A2, B2 = to_net_input(batch, "cpu", saturation=1.2)
    assert torch.equal(A, A2)                                                # the L the network sees: the same
    assert torch.allclose(B2[..., :1, :], B[..., :1, :] * 1.2, atol=1e-6)    # the red row: 1.2 x its ab
    assert B2[..., 1, :].abs().max() < 1e-3                                  # gray stays gray
    assert B2.abs().max() <= 1                                               # clipped to the ab range


def test_mosaic_shrinks_by_averaging():
    stripes = torch.zeros(1, 3, 8, 8)
    stripes[..., ::2] = 1.0  # one-pixel stripes average to mid-gray at half size, not to aliased black or white
    out = mosaic(stripes, 1.0)
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-6)


@pytest.mark.parametrize("n, held", [(20, 2), (79, 7), (200, 8), (9, 0)])
def test_a_small_folder_holds_out_only_what_it_can_spare_and_says_so(tmp_path, n, held):
    for i in range(n):
        _colour(tmp_path / f"mine_{i:03d}.png", (24, 20))
    logged = []
    cfg = {"DATA_DIR": str(tmp_path), "VAL_DIR": "", "MAX_PIXELS": 10_000, "NUM_SAMPLES": 8}
    train, shown = split_files(cfg, logged.append)
    message = next(m for m in logged if m.startswith("sample grids:"))
    assert len(train) == n - held and len(shown) == (held or 8)
    assert all(os.path.dirname(f) == str(tmp_path) for f in shown)  # the user's own photos
    if held:
        assert not set(shown) & set(train) and f"{held} of the {n} photos held out" in message, message
    else:
        assert set(shown) <= set(train) and "none held out" in message, message
