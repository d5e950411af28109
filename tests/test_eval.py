"""--eval end to end through the real command line, on tiny generated images and a tiny generator."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import colorize_base as cb
from conftest import make_photos, tiny_checkpoint
from evaluate import METRICS, center_square, score_file, summarize
from images import gray_version, rgb_to_lab, to_8bit


def photos_and_gray(folder, n=3):
    """n colour photos (conftest.make_photos) and one already-gray image."""
    make_photos(folder, n=n, size=(48, 40))
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((36, 36)) * 255).astype(np.uint8)).save(folder / "already_gray.png")
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f)}


def test_eval_writes_table_csv_json_and_sheet(tmp_path, capsys):
    photos = photos_and_gray(tmp_path / "photos")
    (photos / "broken.jpg").write_bytes(b"not an image")
    weights = tiny_checkpoint(tmp_path / "g.pt")
    out = tmp_path / "eval"
    rc = cb.main(["--eval", str(photos), "--weights", weights, "--out", str(out)])
    assert rc == 1  # the broken file is reported and the rest is still scored
    captured = capsys.readouterr()
    assert "PSNR" in captured.out and "CIEDE2000" in captured.out and "colourfulness" in captured.out
    assert "gray, left out: already_gray.png" in captured.out
    assert "failed: broken.jpg" in captured.err
    rows = read_csv(out / "metrics.csv")
    assert rows["already_gray.png"]["status"] == "gray" and rows["broken.jpg"]["status"] == "failed"
    assert [rows[f"p{i}.png"]["status"] for i in range(3)] == ["ok"] * 3
    assert rows["p2.png"]["width"] == "48"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["gray_left_out"] == ["already_gray.png"]
    assert summary["failed"] == ["broken.jpg"]
    assert summary["gray"]["colorfulness"] == 0  # the gray baseline has no colour
    psnr = np.mean([float(rows[f"p{i}.png"]["psnr"]) for i in range(3)])
    assert summary["ours"]["psnr"] == pytest.approx(psnr, rel=1e-5)
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.width > 3 * 256 and sheet.height > 3 * 256  # three rows of gray | ours | truth


def test_generator_predicting_no_colour_scores_as_the_gray_baseline(tmp_path):
    photos = photos_and_gray(tmp_path / "photos", n=2)
    weights = tiny_checkpoint(tmp_path / "g.pt", zero_output=True)
    assert cb.main(["--eval", str(photos), "--weights", weights, "--eval-dir", str(tmp_path / "e")]) == 0
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    for metric in METRICS:
        assert summary["ours"][metric] == pytest.approx(summary["gray"][metric])


def test_eval_size_cuts_centre_squares(tmp_path):
    photos = photos_and_gray(tmp_path / "photos", n=2)
    weights = tiny_checkpoint(tmp_path / "g.pt")
    out = tmp_path / "eval"
    assert cb.main(["--eval", str(photos), "--weights", weights, "--out", str(out), "--eval-size", "32"]) == 0
    rows = read_csv(out / "metrics.csv")
    assert {(r["width"], r["height"]) for r in rows.values()} == {("32", "32")}
    assert json.loads((out / "summary.json").read_text())["eval_size"] == 32


def test_eval_reports_a_missing_folder(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "g.pt")
    assert cb.main(["--eval", str(tmp_path / "nowhere"), "--weights", weights, "--out", str(tmp_path / "e")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_eval_size_must_not_be_negative(tmp_path, capsys):
    assert cb.main(["--eval", str(tmp_path), "--eval-size", "-1"]) == 2
    assert "--eval-size" in capsys.readouterr().err


def test_gray_version_keeps_the_luminance_and_drops_the_colour():
    rgb = np.random.default_rng(1).random((12, 10, 3)).astype(np.float32)
    gray = gray_version(rgb)
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    L = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0]
    L_gray = rgb_to_lab(torch.from_numpy(gray).permute(2, 0, 1)[None])[0, 0]
    assert (L - L_gray).abs().max() < 0.5  # 8-bit rounding only
    assert np.array_equal(gray_version(gray), gray)  # a gray photo is its own gray version


def position_photo(w, h):
    """An 8-bit colour photo whose red is its column and green its row, as floats in [0, 1]."""
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 60)], axis=2).astype(np.uint8)
    return rgb.astype(np.float32) / 255


class Echo:
    """A stand-in colorizer that returns the gray image it is given."""
    max_pixels = 10 ** 8

    def colorize(self, gray, hints=None):
        return Image.fromarray(np.round(gray * 255).astype(np.uint8))


def test_eval_size_cuts_the_centre_square_not_a_corner(tmp_path):
    wide = position_photo(90, 30)  # shorter side already 30: the square is exactly columns 30..59
    assert np.array_equal(center_square(wide, 30), wide[:, 30:60])
    tall = wide.transpose(1, 0, 2).copy()
    assert np.array_equal(center_square(tall, 30), tall[30:60])
    big = position_photo(180, 60)  # resized to 90 x 30 first: the middle third of the columns
    square = center_square(big, 30)
    assert square.shape == (30, 30, 3)
    assert abs(square[..., 0].mean() - 0.5) < 0.01 and abs(square[..., 1].mean() - 0.5) < 0.01
    assert abs(square[:, 0, 0].mean() - 60.5 / 179) < 0.02 and abs(square[:, -1, 0].mean() - 118.5 / 179) < 0.02
    # --eval scores that square: the truth it compares against is the centre of the file
    Image.fromarray(np.round(wide * 255).astype(np.uint8)).save(tmp_path / "wide.png")
    row, (gray, ours, truth) = score_file(Echo(), str(tmp_path / "wide.png"), 30)
    assert (row["width"], row["height"]) == (30, 30)
    assert np.array_equal(truth, to_8bit(wide[:, 30:60])) and np.array_equal(gray, gray_version(truth))


class Blush:
    """A stand-in colorizer that paints every photo a uniform pink over its gray."""
    max_pixels = 10 ** 8

    def colorize(self, gray, hints=None):
        pink = gray * np.array([1.0, 0.7, 0.85])
        return Image.fromarray(np.round(pink * 255).astype(np.uint8))


def test_false_colour_is_scored_on_white_things_and_summarized_without_photos_lacking_them(tmp_path):
    white_shirt = np.full((20, 20, 3), 0.92, np.float32)
    white_shirt[:, :10] = (0.2, 0.3, 0.8)  # half blue, half white
    red_car = np.zeros((20, 20, 3), np.float32)
    red_car[...] = (0.8, 0.1, 0.1)  # no white at all
    for name, rgb in (("shirt.png", white_shirt), ("car.png", red_car)):
        Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(tmp_path / name)
    rows = [score_file(Blush(), str(tmp_path / name), 0)[0] for name in ("shirt.png", "car.png")]
    assert rows[0]["false_colour"] == 100 and rows[0]["false_colour_gray"] == 0  # all of the white turned pink
    assert np.isnan(rows[1]["false_colour"])
    summary = summarize(rows)
    assert summary["ours"]["false_colour"] == 100 and summary["truth"]["images_with_white"] == 1
