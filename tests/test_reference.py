"""A reference colour photo as colour hints (reference.py): matches land where the content is, colours
come from the reference, a reference that matches nothing gives few hints, bad references are one
line naming them, and the augmented truth as reference beats the automatic result."""
import glob
import os
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from checkpoint import load_generator
from colorizer import BUNDLED_WEIGHTS, Colorizer
from conftest import REPO, photo, tiny_checkpoint, write_png16
from evaluate import center_square
from images import AB_SCALE, gray_version, load_image, rgb_to_lab
from metrics import psnr
import reference
from reference import (BadReferenceError, Guide, apply_palette, augmented_truth, cell_means, default_similarity,
                       encoder_features, match_cells, merge_hints, photo_L, reference_hints)

VAL = os.path.join(REPO, "..", "shared", "datasets", "photos", "val")
needs_val = pytest.mark.skipif(not os.path.isdir(VAL), reason="needs ../shared/datasets/photos/val")


def val_photos(n, size):
    """n colour photos of photos/val from different folders, as size px centre squares."""
    folders = sorted(glob.glob(os.path.join(VAL, "*")))[:n]
    return [center_square(load_image(sorted(glob.glob(os.path.join(f, "*")))[0])[0], size) for f in folders]


@pytest.fixture(scope="module")
def bundled():
    return load_generator(BUNDLED_WEIGHTS, torch.device("cpu"))[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tiny_checkpoint(tmp_path_factory.mktemp("ref") / "tiny.pt", HINT_INPUT=True)
    return load_generator(path, torch.device("cpu"))[0]


@needs_val
def test_a_flipped_copy_matches_at_the_mirrored_positions(bundled):
    # a symmetric subject (a face) also matches at the unmirrored place, where the colour is as right;
    # chance would put 1% of the matches within a cell of the mirrored one
    shares = []
    for truth in val_photos(4, 256):
        L = torch.from_numpy(photo_L(gray_version(truth), 256))
        L_ref = torch.from_numpy(photo_L(truth[:, ::-1].copy(), 256))
        P, R = encoder_features(bundled, L), encoder_features(bundled, L_ref)
        cells, matched, _ = match_cells(P, R, (32, 32), (32, 32), default_similarity(bundled))
        assert len(cells) >= 50                              # of 1024 cells
        mirrored = (cells // 32) * 32 + 31 - cells % 32
        near = ((matched // 32 - mirrored // 32).abs() <= 1) & ((matched % 32 - mirrored % 32).abs() <= 1)
        shares.append(near.float().mean().item())
    assert min(shares) > 0.25 and np.mean(shares) > 0.55, shares


@needs_val
def test_hints_of_the_flipped_truth_carry_the_truths_colours_and_unrelated_references_give_few(bundled):
    truth = val_photos(1, 128)[0]
    L = photo_L(gray_version(truth), 128)
    hints = reference_hints(bundled, L, truth[:, ::-1].copy(), max_hints=30)
    assert len(hints) >= 10
    lab = rgb_to_lab(truth.transpose(2, 0, 1)[None])[0]
    hints_ab = rgb_to_lab(np.float32([c for _, _, c in hints]).T[None, :, :, None] / 255)[0, 1:, :, 0].T
    errors = [np.hypot(*(ab - lab[1:, y, x])) for (x, y, _), ab in zip(hints, hints_ab)]
    assert np.median(errors) < 6                             # Lab units: the truth's colour where the hint is
    rng = np.random.default_rng(0)
    noise = rng.random((128, 128, 3)).astype(np.float32)
    flat = np.broadcast_to(np.float32([0.8, 0.2, 0.1]), (90, 120, 3)).copy()
    for unrelated in (noise, flat):
        assert len(reference_hints(bundled, L, unrelated, max_hints=30)) <= 3


def test_hint_colours_are_means_of_reference_cells_at_photo_coordinates(tiny):
    ref = photo(48, 40, seed=3).astype(np.float32) / 255
    L = photo_L(gray_version(ref[:, ::-1].copy()), 64)       # the photo is the gray mirror of the reference
    hints = reference_hints(tiny, L, ref, photo_size=(480, 400), min_similarity=-1, min_margin=-1)
    assert hints
    lab = rgb_to_lab(torch.from_numpy(ref.transpose(2, 0, 1).copy())[None])
    cells_ab = cell_means(lab, 8)[0, 1:].flatten(1).T.numpy()                  # each reference cell's mean ab
    hints_ab = rgb_to_lab(np.float32([c for _, _, c in hints]).T[None, :, :, None] / 255)[0, 1:, :, 0].T
    for (x, y, _), ab in zip(hints, hints_ab):
        assert 0 <= x < 480 and 0 <= y < 400
        assert np.abs(cells_ab - ab).max(1).min() < 0.5      # what the network takes of a hint: a cell's ab


@pytest.mark.parametrize("constants", [{}, {"ENCODER": "efficientnet_lite0"}], ids=["unet", "lite0"])
def test_both_kinds_of_generator_match_and_max_hints_caps(tmp_path, constants):
    netG = load_generator(tiny_checkpoint(tmp_path / "g.pt", HINT_INPUT=True, **constants), torch.device("cpu"))[0]
    ref = photo(64, 64, seed=1).astype(np.float32) / 255
    hints = reference_hints(netG, photo_L(ref, 64), ref, min_similarity=-1, min_margin=-1, max_hints=5)
    assert 1 <= len(hints) <= 5
    assert reference_hints(netG, photo_L(ref, 64), ref, max_hints=0) == []


def test_references_of_any_size_rgba_and_16_bit(tiny, tmp_path):
    L = photo_L(photo(40, 32, seed=2).astype(np.float32) / 255, 64)
    write_png16(tmp_path / "rgb16.png", photo(36, 30, 13).astype(np.uint16) * 257)
    rgba = Image.fromarray(photo(300, 200, 4)).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 255))
    rgba.save(tmp_path / "big_rgba.png")
    for ref in (tmp_path / "rgb16.png", tmp_path / "big_rgba.png", str(tmp_path / "big_rgba.png"), rgba,
                photo(80, 300, 5)):
        assert isinstance(reference_hints(tiny, L, ref, min_similarity=-1, min_margin=-1), list)
    clear = rgba.copy()
    clear.putalpha(Image.new("L", rgba.size, 0))             # all transparent: nothing to match, nothing to give
    with pytest.raises(BadReferenceError, match="transparent"):
        reference_hints(tiny, L, clear)


def test_bad_references_are_one_line_naming_them(tiny, tmp_path):
    L = photo_L(photo(40, 32, seed=2).astype(np.float32) / 255, 64)
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.fromarray(np.full((20, 30), 128, np.uint8)).convert("RGB").save(tmp_path / "gray.png")
    Image.fromarray(photo(1, 1, 0)).save(tmp_path / "dot.png")
    Image.fromarray(photo(30, 30, 0)).save(tmp_path / "big.png")
    for name, why, kw in (("notes.jpg", "not an image", {}), ("gray.png", "already gray", {}),
                          ("dot.png", "too small", {}), ("big.png", "over the limit", {"max_pixels": 800}),
                          ("missing.png", "does not exist", {})):
        with pytest.raises(BadReferenceError) as e:
            reference_hints(tiny, L, str(tmp_path / name), **kw)
        message = str(e.value)
        assert name in message and why in message and "\n" not in message
        assert isinstance(e.value, ValueError)
    for bad in (np.zeros((4, 4)), np.full((8, 8, 3), 2.0, np.float32)):
        with pytest.raises(BadReferenceError, match="reference photo"):
            reference_hints(tiny, L, bad)


def test_user_hints_win_over_reference_hints_near_them():
    ref = [(10, 10, (200, 0, 0)), (100, 100, (0, 200, 0)), (395, 195, (0, 0, 200))]
    user = [(104, 96, "#ffffff"), (300, 20, "#000000")]
    # a 400 x 200 photo seen at 200 x 100: (104, 96) is 2 render pixels from (100, 100), under a cell of 8
    assert merge_hints(ref, user, 400, 200, 200, 100) == [ref[0], ref[2], *user]
    assert merge_hints(ref, [], 400, 200, 200, 100) == ref


def test_augmented_truth_crops_flips_and_rescales_keeping_colours():
    rgb = np.zeros((100, 200, 3), np.float32)
    rgb[:, :100] = (1, 0, 0)                                 # red left half, blue right half
    rgb[:, 100:] = (0, 0, 1)
    sizes, flipped = set(), 0
    for seed in range(20):
        out = augmented_truth(rgb, np.random.default_rng(seed))
        h, w = out.shape[:2]
        assert 0.6 * 0.75 * 100 - 1 <= h <= 0.9 * 1.25 * 100 + 1 and 0.6 * 0.75 * 200 - 1 <= w <= 0.9 * 1.25 * 200 + 1
        assert np.abs(out[:, :, 1]).max() < 0.1              # no green anywhere: the colours are the photo's
        flipped += out[:, 0, 2].mean() > out[:, 0, 0].mean()  # blue on the left
        sizes.add((h, w))
    assert 3 <= flipped <= 17 and len(sizes) > 10
    assert np.array_equal(augmented_truth(rgb, np.random.default_rng(1)), augmented_truth(rgb, np.random.default_rng(1)))


@needs_val
def test_hints_of_the_augmented_truth_beat_the_automatic_result():
    colorizer = Colorizer.load(BUNDLED_WEIGHTS, device="cpu", render_size=256)
    gains = []
    for truth in val_photos(4, 256):
        gray = gray_version(truth)
        ref = augmented_truth(truth, np.random.default_rng(zlib.crc32(truth.tobytes()[:64])))
        hints = reference_hints(colorizer.network.netG, photo_L(gray, 256), ref, photo_size=(256, 256))
        auto = np.asarray(colorizer.colorize(gray), np.float32) / 255
        guided = np.asarray(colorizer.colorize(gray, hints=hints), np.float32) / 255
        gains.append(psnr(guided, truth) - psnr(auto, truth))
    assert min(gains) > 0 and np.mean(gains) > 1.5, gains


# -----------------------------------------------------------------------------
# Through the API and the command line: Colorizer.colorize(reference=), --infer / --eval --reference

def test_colorize_with_a_reference_is_its_hints_then_its_palette(tmp_path, monkeypatch):
    """reference= is the hints reference_hints gives, merged under the user's, and then the
    reference's palette as far as the photos look alike; with the user's own hints, no palette. The
    reference's hints are not spread (HINT_SPREAD), so they are compared with spreading off."""
    path = tiny_checkpoint(tmp_path / "tiny.pt", HINT_INPUT=True)
    colorizer = Colorizer.load(path, "cpu", render_size=64, saturation=1, hint_spread=0)
    rgb = photo(80, 64, seed=4)
    ref = rgb[:, ::-1]  # its mirror: every cell has a match
    small = photo_L(rgb.astype(np.float32) / 255, 64)
    hints = reference_hints(colorizer.network.netG, small, ref, (80, 64), min_similarity=0.0)
    assert hints
    never, always = ({k: v for k in reference.PALETTE_SIMILARITY} for v in ((2.0, 3.0), (-3.0, -2.0)))
    monkeypatch.setattr(reference, "PALETTE_SIMILARITY", never)
    monkeypatch.setattr(reference, "PALETTE_HINTS", {k: 0 for k in reference.PALETTE_HINTS})
    got = np.asarray(colorizer.colorize(rgb, reference=ref), int)
    colorizer.hint_spread = 0.125
    assert np.array_equal(np.asarray(colorizer.colorize(rgb, reference=ref), int), got)  # guesses: not spread
    colorizer.hint_spread = 0
    mine = reference_hints(colorizer.network.netG, small, ref, (80, 64))
    want = np.asarray(colorizer.colorize(rgb, hints=mine) if mine else colorizer.colorize(rgb), int)
    assert np.abs(got - want).max() <= 1
    mine = [(5, 5, "#ff0000")]
    merged = merge_hints(reference_hints(colorizer.network.netG, small, ref, (80, 64)), mine, 80, 64, 64, 51)
    assert merged[-1] == mine[0]
    monkeypatch.setattr(reference, "PALETTE_SIMILARITY", always)
    with_mine = np.asarray(colorizer.colorize(rgb, hints=mine, reference=ref), int)
    assert np.abs(with_mine - np.asarray(colorizer.colorize(rgb, hints=merged), int)).max() <= 1


def test_a_palette_moves_the_colours_toward_the_reference(monkeypatch):
    colorizer = Colorizer.load(BUNDLED_WEIGHTS, device="cpu", render_size=64, saturation=1)
    rgb = (val_photos(1, 64)[0] * 255).astype(np.uint8) if os.path.isdir(VAL) else photo(64, 64, seed=3)
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0], red[..., 1:] = 200, 40

    def mean_a():
        out = np.asarray(colorizer.colorize(rgb, reference=red), np.float32) / 255
        return rgb_to_lab(out.transpose(2, 0, 1)[None])[0, 1].mean()
    monkeypatch.setattr(reference, "PALETTE_SIMILARITY", {k: (-3.0, -2.0) for k in reference.PALETTE_SIMILARITY})
    laid = mean_a()
    monkeypatch.setattr(reference, "PALETTE_SIMILARITY", {k: (2.0, 3.0) for k in reference.PALETTE_SIMILARITY})
    monkeypatch.setattr(reference, "PALETTE_HINTS", {k: 0 for k in reference.PALETTE_HINTS})
    assert laid > mean_a() + 5


def test_matched_cells_lay_the_palette_where_the_photos_do_not_look_alike_as_wholes(tiny, monkeypatch):
    """PALETTE_HINTS: fully from that many matched hints on, in proportion below, 0 off."""
    netG = tiny
    rgb = photo(80, 64, seed=4)
    small, ref = photo_L(rgb.astype(np.float32) / 255, 64), rgb[:, ::-1]
    monkeypatch.setattr(reference, "PALETTE_SIMILARITY", {k: (2.0, 3.0) for k in reference.PALETTE_SIMILARITY})
    kind = reference.encoder_kind(netG)
    strengths = []
    for gate in (0, 1000, 1):
        monkeypatch.setattr(reference, "PALETTE_HINTS", {**reference.PALETTE_HINTS, kind: gate})
        guide = reference.reference_guide(netG, small, ref, (80, 64), min_similarity=0.0)
        strengths.append(guide.strength)
    assert guide.hints and strengths == [0.0, pytest.approx(len(guide.hints) / 1000), 1.0]


def test_apply_palette_takes_the_reference_mean_and_narrower_spread_and_leaves_gray_gray():
    rng = np.random.default_rng(0)
    ab = rng.normal([[-20], [30]], [[6], [3]], (2, 4000)).astype(np.float32)
    ab[:, :100] = 0  # gray pixels
    fake_B = (ab / AB_SCALE).reshape(1, 2, 40, 100)
    want_mean, want_cov = np.array([25.0, 10.0]), np.array([[16.0, 2.0], [2.0, 4.0]])
    guide = Guide([], 0.9, want_mean, want_cov, 1.0)
    out = apply_palette(fake_B, guide).reshape(2, -1) * AB_SCALE
    assert np.abs(out[:, :100]).max() < 1e-4  # gray stays gray
    coloured = out[:, 100:]
    assert np.allclose(coloured.mean(1), want_mean, atol=1.5)
    assert np.allclose(np.cov(coloured), want_cov, rtol=0.2, atol=2)
    assert apply_palette(fake_B, guide._replace(strength=0.0)) is fake_B
    half = apply_palette(fake_B, guide._replace(strength=0.5)).reshape(2, -1)[:, 100:] * AB_SCALE
    assert np.allclose(half, (ab[:, 100:] + coloured) / 2, atol=1e-3)
    wide = apply_palette(fake_B, guide._replace(ab_cov=np.array([[400.0, 0], [0, 400.0]]))).reshape(2, -1)[:, 100:]
    assert np.trace(np.cov(wide * AB_SCALE)) <= np.trace(np.cov(ab[:, 100:])) * 1.05  # never wider: no colour past gray


def test_infer_and_eval_with_a_reference_on_the_command_line(tmp_path):
    from conftest import run_cli
    weights = tiny_checkpoint(tmp_path / "tiny.pt", HINT_INPUT=True)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(photo(48, 40, seed=i)).save(photos / f"p{i}.png")
    Image.fromarray(photo(48, 40, seed=9)).save(tmp_path / "ref.png")
    Image.fromarray(photo(48, 40, seed=9)).convert("L").save(tmp_path / "gray_ref.png")
    common = ["--weights", weights, "--device", "cpu", "--render-size", "32"]
    r = run_cli("--infer", photos, "--reference", tmp_path / "ref.png", "--out", tmp_path / "out", *common)
    assert r.returncode == 0 and "colorized 3 of 3" in r.stdout, r.stderr
    for bad, said in ((tmp_path / "gray_ref.png", "it is already gray"), (tmp_path / "none.png", "does not exist")):
        r = run_cli("--infer", photos, "--reference", bad, "--out", tmp_path / "out2", *common)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(bad) in r.stderr and said in r.stderr, r.stderr
        assert not (tmp_path / "out2").exists()  # refused before any work
    r = run_cli("--eval", photos, "--reference", "truth-aug", "--out", tmp_path / "ev", *common)
    assert r.returncode == 0, r.stderr
    assert "automatic" in r.stdout and "ab divergence from the reference" in r.stdout
    import json
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["reference"] == "truth-aug" and {"ours", "automatic", "gray"} <= set(summary)
    assert "ab_divergence" in summary["ours"] and "ab_divergence" in summary["automatic"]
    refs = tmp_path / "refs"  # a folder of references named like the photos: p1 has none
    refs.mkdir()
    for i in (0, 2):
        Image.fromarray(photo(48, 40, seed=20 + i)).save(refs / f"p{i}.jpg")
    r = run_cli("--eval", photos, "--reference", refs, "--out", tmp_path / "ev2", *common)
    assert r.returncode == 1 and "failed: p1.png: no reference photo p1.* in" in r.stderr, r.stderr
    assert "2 colour photos" in r.stdout


def test_the_whole_photo_similarity_is_that_of_its_coarsest_level_and_skips_transparent_cells(tiny):
    """whole_features: the mean over the photo's cells (of the usable ones, where a mask is given) of
    the coarsest encoder level; reference_guide's similarity of a photo to itself is 1."""
    netG = tiny
    rgb = photo(80, 64, seed=5)
    L = torch.as_tensor(photo_L(rgb.astype(np.float32) / 255, 64))
    levels = reference.encoder_levels(netG, L, 32)
    deep = levels[max(levels)]
    rows, cols = -(-L.shape[-2] // max(levels)), -(-L.shape[-1] // max(levels))
    cells = deep[0, :, :rows, :cols].flatten(1).T
    assert torch.allclose(reference.whole_features(levels, L), cells.mean(0))
    usable = torch.zeros(rows * cols, dtype=torch.bool)
    usable[0] = True
    assert torch.allclose(reference.whole_features(levels, L, usable), cells[0])
    assert reference.reference_guide(netG, L, rgb).similarity == pytest.approx(1.0, abs=1e-5)
