"""Issue 20, the classes of its third hostile round not in test_hostile_round3.py: names that are
formulas or hold control characters, inputs that hold no images, a --val-dir that does not exist,
the Python API's numbers and arrays, float pixels (NaN, or outside [0, 1]) from any source,
hints files with a byte-order mark; then names of up to 255 bytes, "--", an --out folder inside the
inputs, library warnings, valid files once refused (a JPEG without its end marker, a PNG with a large
text chunk), and a closed or full stdout / stderr."""
import csv
import io
import json
import os
import re
import shlex
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

import colorize_base as cb
import data
from colorize_base import Colorizer
from conftest import REPO, make_photos, photo, run_cli, tiny_checkpoint
from files import UserError, fit_name
from hints import read_hints
from test_hostile_inputs import one_line_error
from test_hostile_round3 import one_line, snapshot


def _failed_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("failed: ")]


# -----------------------------------------------------------------------------
# Security: names as formulas, names with control characters

FORMULA_NAMES = ["=1+1.png", "+cmd.png", "-2+3.png", "@SUM(A1).png"]


def test_eval_writes_names_that_look_like_formulas_as_text(tmp_path, capsys, weights):
    album = tmp_path / "album"
    album.mkdir()
    for i, name in enumerate(FORMULA_NAMES):
        Image.fromarray(photo(32, 32, i)).save(album / name)
    (album / "=bad.png").write_text("not an image")  # a failed row is written the same way
    before = snapshot(*(album / f for f in os.listdir(album)))
    assert cb.main(["--eval", str(album), "--weights", weights, "--out", str(tmp_path / "eval")]) == 1
    capsys.readouterr()
    with open(tmp_path / "eval" / "metrics.csv", newline="") as f:
        cells = {row["file"]: row for row in csv.DictReader(f)}
    assert sorted(cells) == sorted("'" + n for n in [*FORMULA_NAMES, "=bad.png"]), cells
    assert cells["'=bad.png"]["status"] == "failed" and cells["'+cmd.png"]["status"] == "ok"
    assert not any(v[:1] in "=+-@" for row in cells.values() for v in row.values() if v and not v[1:2].isdigit())
    assert snapshot(*(album / f for f in os.listdir(album))) == before


CONTROL_NAMES = ["esc\x1b]0;owned\x07.png", "cr\rfailed: spoofed.png", "c1\x9b31m.png", "del\x7f.png",
                 "tab\tnl\nx.png", "bidi\u202egnp.png"]


def _no_raw_controls(text):
    """No control character from a name in text; CR only as tqdm's progress bar writes it, never before a word."""
    bad = [c for c in text if (ord(c) < 32 and c not in "\n\r") or 0x7f <= ord(c) <= 0x9f or c == "\u202e"]
    assert not bad and "\rfailed: spoofed" not in text, repr(text)


def test_control_characters_in_names_are_printed_escaped_everywhere(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    for name in CONTROL_NAMES:
        (album / name).write_text("not an image")  # each one a "failed:" line naming it
    Image.fromarray(photo(32, 32, 1)).save(album / "good\x1b[2J.png")
    before = snapshot(*(album / f for f in os.listdir(album)))
    p = run_cli("--infer", album, "--weights", weights, "--out", tmp_path / "out")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "colorized 1 of 7" in p.stdout, p.stdout + p.stderr
    _no_raw_controls(p.stdout + p.stderr)
    failed = _failed_lines(p.stderr)
    assert len(failed) == 6 and f"failed: {album}/esc\\x1b]0;owned\\x07.png: not an image" in p.stderr, failed
    assert "cr\\x0dfailed: spoofed.png" in p.stderr and "c1\\x9b31m.png" in p.stderr and "\\u202e" in p.stderr
    assert os.path.exists(tmp_path / "out" / "good\x1b[2J.png")  # the file itself keeps its name
    # --eval: the table, the "failed:" lines and metrics.csv
    p = run_cli("--eval", album, "--weights", weights, "--out", tmp_path / "eval")
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(_failed_lines(p.stderr)) == 6, p.stderr
    _no_raw_controls(p.stdout + p.stderr)
    _no_raw_controls((tmp_path / "eval" / "metrics.csv").read_text().replace("\r\n", "\n"))
    # a refusal (one "error:" line) and a training warning name it escaped too
    p = run_cli("--infer", album / "good\x1b[2J.png", "--hints", album / "esc\x1b]0;owned\x07.png",
                "--weights", weights, "--out", tmp_path / "out2")
    assert p.returncode == 1 and "esc\\x1b]0;owned\\x07.png" in p.stderr, p.stderr
    _no_raw_controls(p.stdout + p.stderr)
    p = run_cli("--infer", tmp_path / "no\x1bsuch", "--weights", weights, "--out", tmp_path / "out3")
    assert p.returncode == 1 and "no\\x1bsuch" in p.stderr, p.stderr
    _no_raw_controls(p.stdout + p.stderr)
    logged = []
    data.scan_images([str(album)], 10_000, logged.append)
    assert sum("warning: skipping " in m for m in logged) == 6, logged
    _no_raw_controls("\n".join(logged))
    assert snapshot(*(album / f for f in os.listdir(album))) == before


# -----------------------------------------------------------------------------
# Inputs that hold no images

@pytest.mark.parametrize("make", [
    lambda p: p.mkdir(),                                                 # an empty folder
    lambda p: (p.mkdir(), (p / "notes.txt").write_text("hi"), (p / "sub").mkdir()),  # no image in it, at any depth
    lambda p: (p.mkdir(), (p / "sub").mkdir()),
])
@pytest.mark.parametrize("name", ["album", "x.jpg"])                   # a folder named like a photo too
def test_an_input_without_images_is_refused_naming_it(tmp_path, weights, make, name):
    make(tmp_path / name)
    before = sorted(os.listdir(tmp_path))
    p = run_cli("--infer", tmp_path / name, "--weights", weights, "--out", tmp_path / "out")
    one_line_error(p, f"no image files in {tmp_path / name} ", "nothing was colorized")
    assert "colorized 0 of 0" not in p.stdout
    p = run_cli("--eval", tmp_path / name, "--weights", weights, "--out", tmp_path / "eval")
    one_line_error(p, f"--eval {tmp_path / name}: no image files there")
    assert sorted(os.listdir(tmp_path)) == before  # no output folder made


def test_an_empty_folder_among_other_inputs_fails_by_name_and_the_rest_run(tmp_path, capsys, weights):
    make_photos(tmp_path / "album", n=2)
    (tmp_path / "empty").mkdir()
    (tmp_path / "y.jpg").mkdir()
    assert cb.main(["--infer", str(tmp_path / "album"), str(tmp_path / "empty"), str(tmp_path / "y.jpg"),
                    "--weights", weights, "--out", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert "colorized 2 of 4" in out and "Traceback" not in err, out + err
    assert f"failed: {tmp_path / 'empty'}: a folder holding no image files" in err, err
    assert f"failed: {tmp_path / 'y.jpg'}: a folder holding no image files" in err, err
    assert sorted(os.listdir(tmp_path / "out")) == ["p0.png", "p1.png"]


# -----------------------------------------------------------------------------
# A --val-dir that does not exist

def test_a_val_dir_that_does_not_exist_is_refused_naming_it(tmp_path, capsys):
    data_dir, run_dir = make_photos(tmp_path / "data", n=4), tmp_path / "run"
    for val_dir in (tmp_path / "vall", tmp_path / "nowhere" / "val"):
        assert cb.main(["--train", "--data", data_dir, "--val-dir", str(val_dir), "--run-dir", str(run_dir),
                        "--steps", "1", "--device", "cpu"]) == 2
        one_line(capsys.readouterr().err, f"--val-dir {val_dir}: no such folder", '--val-dir ""')
        assert not run_dir.exists() or os.listdir(run_dir) == ["lock"]  # no checkpoint, log or samples
    # "" keeps its meaning: the sample grids' photos come from DATA_DIR (4 are too few to hold one out)
    cfg = {**cb.CONSTANTS, "DATA_DIR": data_dir, "VAL_DIR": "", "MAX_PIXELS": 10_000, "NUM_SAMPLES": 1}
    train_files, val_files = data.split_files(cfg, lambda msg: None)
    assert len(train_files) == 4 and len(val_files) == 1 and val_files[0] in train_files


# -----------------------------------------------------------------------------
# The Python API: numbers and arrays

@pytest.fixture(scope="module")
def small(weights):
    return Colorizer.load(weights, device="cpu", render_size=32, max_pixels=5000, saturation=1.0)


def test_numpy_scalars_are_numbers_and_bools_are_not(small, tmp_path):
    hinted = Colorizer.load(tiny_checkpoint(tmp_path / "hints.pt", HINT_INPUT=True), device="cpu", render_size=32)
    rgb = photo(32, 24, 1)
    plain = np.asarray(small.colorize(rgb, render_size=32, saturation=1.5))
    for size in (np.int64(32), np.int32(32), np.uint16(32)):
        assert np.array_equal(np.asarray(small.colorize(rgb, render_size=size, saturation=np.float32(1.5))), plain)
    hints = [(np.int64(3), np.float32(4.5), "#ff0000"), (np.float64(10), np.uint8(7), (np.int64(0), 200, 0.5))]
    assert np.array_equal(np.asarray(hinted.colorize(rgb, hints=hints)),
                          np.asarray(hinted.colorize(rgb, hints=[(3, 4.5, "#ff0000"), (10.0, 7, (0, 200, 0.5))])))
    for bad in (True, False, np.bool_(True), 32.0, np.float32(32), 0, -1, "32"):
        with pytest.raises(ValueError, match="render_size must be a positive whole number of pixels, got "):
            small.colorize(rgb, render_size=bad)
    for bad in (True, np.float32("nan"), -1):
        with pytest.raises(ValueError, match="saturation must be a number >= 0, got "):
            small.colorize(rgb, saturation=bad)
    for bad in (True, np.float32("nan"), np.int64(99), "3"):
        with pytest.raises(ValueError, match="hint 1: x must be a pixel coordinate in"):
            hinted.colorize(rgb, hints=[(bad, 1, "#ff0000")])


def test_arrays_are_held_to_max_pixels_as_files_and_pil_images_are(small):
    for image in (np.zeros((80, 80, 3), np.uint8), np.zeros((80, 80), np.float32), Image.new("RGB", (80, 80))):
        with pytest.raises(ValueError, match="80x80 = 6400 pixels is over the limit of 5000"):
            small.colorize(image)
    assert small.colorize(np.zeros((70, 70, 3), np.uint8)).size == (70, 70)  # 4900: under


def test_arrays_with_alpha_give_rgba_as_rgba_images_do(small):
    rgba = np.dstack([photo(30, 20, 2), np.linspace(0, 255, 600).reshape(20, 30).astype(np.uint8)])
    from_image = small.colorize(Image.fromarray(rgba))  # RGBA
    for given in (rgba, rgba.astype(np.float32) / 255):
        out = small.colorize(given)
        assert out.mode == "RGBA" and out.size == (30, 20)
        assert np.array_equal(np.asarray(out), np.asarray(from_image))
    la = np.dstack([rgba[..., 0], rgba[..., 3]])  # (H, W, 2): gray and alpha, as an LA image
    assert np.array_equal(np.asarray(small.colorize(la)), np.asarray(small.colorize(Image.fromarray(la))))
    for shape in ((4, 4, 5), (4, 4, 0), (4, 4, 4, 1)):
        with pytest.raises(ValueError, match="image array"):
            small.colorize(np.zeros(shape, np.uint8))


# -----------------------------------------------------------------------------
# Float pixels: one rule for files, PIL images and arrays

def _float_tiff(path, values):
    Image.fromarray(values.astype(np.float32)).save(path)  # mode F
    return path


def test_nan_or_out_of_range_float_pixels_are_refused_from_any_source(tmp_path, capsys, small, weights):
    ramp = np.linspace(0, 1, 24 * 32, dtype=np.float32).reshape(24, 32)
    nan = ramp.copy()
    nan[5, 7] = np.nan
    cases = {"nan.tif": (nan, "holds NaN or Inf"), "inf.tif": (np.where(ramp > 0.5, np.inf, ramp), "holds NaN or Inf"),
             "bytes.tif": (ramp * 255, "must be in [0, 1]"), "negative.tif": (ramp - 0.5, "must be in [0, 1]")}
    album = tmp_path / "album"
    album.mkdir()
    for name, (values, why) in cases.items():
        _float_tiff(album / name, values)
        with pytest.raises(ValueError, match=rf"PIL image: .*{why.replace('[', '.').replace(']', '.')}"):
            small.colorize(Image.open(album / name))
        with pytest.raises(ValueError, match=rf"image array: .*{why.replace('[', '.').replace(']', '.')}"):
            small.colorize(values)
    _float_tiff(album / "good.tif", ramp)
    before = snapshot(*(album / f for f in os.listdir(album)))
    assert cb.main(["--infer", str(album), "--weights", weights, "--out", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert "colorized 1 of 5" in out and "Traceback" not in err, out + err
    for name, (_, why) in cases.items():
        assert any(line.startswith(f"failed: {album / name}: ") and why in line for line in _failed_lines(err)), err
    assert "[0, 255]" in err  # the range found, so the user sees what is wrong
    assert sorted(os.listdir(tmp_path / "out")) == ["good.png"]
    # --eval and --train's scan refuse them the same way, by name
    cb.main(["--eval", str(album), "--weights", weights, "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(_failed_lines(err)) == 4, err
    logged = []
    data.scan_images([str(album)], 10_000, logged.append)
    assert sum(f"warning: skipping {album}" in m and ("NaN" in m or "[0, 1]" in m) for m in logged) == 4, logged
    assert snapshot(*(album / f for f in os.listdir(album))) == before
    # in range: a float file, PIL image and array give what the 8-bit version gives
    assert np.array_equal(np.asarray(small.colorize(ramp)), np.asarray(small.colorize(Image.fromarray(ramp))))


# -----------------------------------------------------------------------------
# Hints files with a byte-order mark

@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_hints_files_with_a_byte_order_mark_or_in_utf16_are_read(tmp_path, capsys, encoding):
    hinted = tiny_checkpoint(tmp_path / "h.pt", HINT_INPUT=True)
    album = tmp_path / "album"
    make_photos(album, n=2, size=(32, 32))
    text = json.dumps({"hints": [{"x": 3, "y": 4, "color": "#c02020"}]})
    (tmp_path / "bom.json").write_bytes(text.encode(encoding))
    (album / "p0.hints.json").write_bytes(text.encode(encoding))  # a sidecar, as Notepad saves it
    before = snapshot(tmp_path / "bom.json", album / "p0.hints.json")
    def infer(*args):
        code = cb.main(["--infer", *map(str, args), "--weights", hinted])
        out, err = capsys.readouterr()
        assert "Traceback" not in err and "failed" not in err, err
        return code, out
    assert infer(album / "p1.png", "--hints", tmp_path / "bom.json", "--out", tmp_path / "out") == \
        (0, f"colorized 1 of 1 files into {tmp_path / 'out'}\n")
    assert infer(album, "--out", tmp_path / "out2") == (0, f"colorized 2 of 2 files into {tmp_path / 'out2'}\n")
    assert read_hints(str(album / "p0.hints.json")) == [(3, 4, "#c02020")]
    # read, not skipped: a hint outside the photo, in the same encoding, fails that photo by name
    (album / "p1.hints.json").write_bytes(text.replace('"x": 3', '"x": 999').encode(encoding))
    assert cb.main(["--infer", str(album), "--weights", hinted, "--out", str(tmp_path / "out4")]) == 1
    out, err = capsys.readouterr()
    assert "colorized 1 of 2" in out and _failed_lines(err) == [
        f"failed: {album / 'p1.png'}: {album / 'p1.hints.json'}: hint 1: x must be a pixel coordinate in [0, 32) "
        f"of this 32x32 photo, got 999"], err
    assert snapshot(tmp_path / "bom.json", album / "p0.hints.json") == before


# -----------------------------------------------------------------------------
# Names of up to 255 bytes: every name this tool makes fits, cut on a character

def _name(total, char, ext=".png"):
    """A file name of exactly total bytes in UTF-8 that ends its stem in char (1, 2 or 3 bytes)."""
    stem_bytes = total - len(ext)
    k = stem_bytes // len(char.encode()) // 2
    return "a" * (stem_bytes - k * len(char.encode())) + char * k + ext


def test_fit_name_cuts_bytes_on_a_character_boundary():
    for char in ("a", "é", "日", "\U0001f600"):
        for total in range(240, 300):
            for suffix in ("", ".png", "_12.png", ".tmp4194304"):
                name = fit_name(char * total, suffix)
                assert len(name.encode()) <= 255 and name.endswith(suffix) and name.encode().decode() == name
                want = len((char * total).encode()) + len(suffix)
                assert len(name.encode()) > min(want, 255) - 4  # no more was cut than one character
    assert fit_name("short", ".png") == "short.png"


def test_file_names_of_250_to_255_bytes_are_colorized_and_exported(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    names = [_name(total, char) for char in ("a", "é", "日") for total in (250, 253, 254, 255)]
    for i, name in enumerate(names):
        assert len(name.encode()) in (250, 253, 254, 255)
        Image.fromarray(photo(8, 6, i)).save(album / name)
    before = snapshot(*(album / n for n in names))
    p = run_cli("--infer", album, "--weights", weights, "--out", tmp_path / "out")  # temporaries of 255-byte names
    assert p.returncode == 0 and "Traceback" not in p.stderr and "failed" not in p.stderr, p.stderr
    assert f"colorized {len(names)} of {len(names)}" in p.stdout
    assert sorted(os.listdir(tmp_path / "out")) == sorted(names)
    p = run_cli("--infer", album, "--weights", weights, "--out", album)  # beside the inputs: the _1 names, cut
    assert p.returncode == 0 and "Traceback" not in p.stderr and "failed" not in p.stderr, p.stderr
    made = sorted(set(os.listdir(album)) - set(names))
    # "a" * 249 + "_1.png" is the cut of several: _2, _3 follow
    assert len(made) == len(names) and all(re.fullmatch(r".+_[123]\.png", n) and len(n.encode()) <= 255 for n in made)
    assert all(n.encode().decode() == n for n in made)  # whole characters only
    assert snapshot(*(album / n for n in names)) == before
    export = tmp_path / _name(255, "日", ".pt")  # and a model file of a 255-byte name, through its temporary
    p = run_cli("--export", export, "--weights", weights)
    assert p.returncode == 0 and "Traceback" not in p.stderr and export.is_file(), p.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["album", "out", export.name])  # no temporary left


# -----------------------------------------------------------------------------
# "--": every argument after it is a path, even one that starts with "-"

def test_paths_after_a_double_dash_are_inputs_even_when_they_start_with_a_dash(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    for i, name in enumerate(["good.png", "-rf.png", "--help.png", "--"]):
        Image.fromarray(photo(8, 8, i)).save(album / name, format="PNG")
    before = snapshot(*(album / f for f in os.listdir(album)))
    p = run_cli("--infer", "good.png", "--weights", weights, "--out", tmp_path / "out", "--",
                "-rf.png", "--help.png", "-missing.png", cwd=album)
    assert p.returncode == 1 and "Traceback" not in p.stderr and "colorized 3 of 4" in p.stdout, p.stdout + p.stderr
    assert _failed_lines(p.stderr) == ["failed: -missing.png: no such file, folder or pattern"], p.stderr
    assert sorted(os.listdir(tmp_path / "out")) == ["--help.png", "-rf.png", "good.png"]
    p = run_cli("--infer", "--", "--", "-rf.png", "--weights", cwd=album)  # only the first -- is special
    assert p.returncode == 1 and "Traceback" not in p.stderr and "colorized 2 of 3" in p.stdout, p.stdout + p.stderr
    assert _failed_lines(p.stderr) == ["failed: --weights: no such file, folder or pattern"], p.stderr
    p = run_cli("--eval", album, "--", "-rf.png")  # paths after -- are --infer's alone
    assert p.returncode == 2 and "Traceback" not in p.stderr and "the paths after -- (-rf.png) are for --infer" in p.stderr
    assert snapshot(*(album / f for f in os.listdir(album))) == before


# -----------------------------------------------------------------------------
# --out inside the input folder: the outputs are never inputs of the next run

def test_an_output_folder_inside_the_inputs_is_left_out_of_them(tmp_path, weights):
    album = tmp_path / "album"
    make_photos(album, n=2, size=(16, 16))
    (tmp_path / "link").symlink_to(album / "colour", target_is_directory=True)  # the same folder, another name
    album2 = tmp_path / "album2"
    make_photos(album2, n=2, size=(16, 16))
    for photos, out in ((album, album / "colour"), (album, album / "colour"), (album, tmp_path / "link"),
                        (album2, album2 / "sub" / "deeper"), (album2, album2 / "sub" / "deeper")):
        p = run_cli("--infer", photos, "--weights", weights, "--out", out)
        assert p.returncode == 0 and "Traceback" not in p.stderr and "colorized 2 of 2" in p.stdout, p.stdout + p.stderr
    assert sorted(os.listdir(album / "colour")) == ["p0.png", "p1.png"]  # no colour/colour/, no p0_1.png
    assert sorted(os.listdir(album2 / "sub" / "deeper")) == ["p0.png", "p1.png"]
    before = snapshot(*(album / f for f in ("p0.png", "p1.png")))
    for _ in range(2):  # --eval: its own sheet.png is no photo to score
        p = run_cli("--eval", album, "--weights", weights, "--out", album / "eval")
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stdout + p.stderr
        with open(album / "eval" / "metrics.csv", newline="") as f:
            scored = [row["file"] for row in csv.DictReader(f)]
        assert "eval/sheet.png" not in scored and "p0.png" in scored and "colour/p0.png" in scored, scored
    assert snapshot(*(album / f for f in ("p0.png", "p1.png"))) == before


# -----------------------------------------------------------------------------
# Library warnings: our one line naming the file, or nothing

def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_library_warnings_become_one_line_of_ours_naming_the_file(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    bomb = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 9999, 9999, 8, 0, 0, 0, 0)) \
        + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b"")  # 74 bytes declaring 100 megapixels
    (album / "bomb.png").write_bytes(bomb)
    tiff = b"II*\0" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x010E, 2, 100, 1000) + b"\0\0\0\0"  # points past its end
    Image.fromarray(photo(16, 12, 1)).save(album / "bad_exif.jpg", exif=b"Exif\0\0" + tiff)
    Image.fromarray(photo(16, 12, 2)).save(album / "good.png")
    before = snapshot(*(album / f for f in os.listdir(album)))
    for limit, why in (("100000000", "truncated"), ("5000", "9999x9999 = 99980001 pixels is over the limit of 5000")):
        out = tmp_path / f"out{limit}"
        p = run_cli("--infer", album, "--weights", weights, "--out", out, "--max-pixels", limit)
        assert p.returncode == 1 and "Traceback" not in p.stderr and "colorized 2 of 3" in p.stdout, p.stdout + p.stderr
        assert "Warning" not in p.stderr and "DOS attack" not in p.stderr and "warnings.warn" not in p.stderr, p.stderr
        assert [line for line in _failed_lines(p.stderr)] == [f"failed: {album / 'bomb.png'}: " + line.split(": ", 2)[2]
                                                              for line in _failed_lines(p.stderr)]
        assert len(_failed_lines(p.stderr)) == 1 and why in p.stderr, p.stderr
        warned = [line for line in p.stderr.splitlines() if "warning: " in line]
        assert len(warned) == 1 and warned[0].endswith(")") and \
            f"warning: {album / 'bad_exif.jpg'}: its EXIF (or TIFF tag) metadata is damaged" in warned[0], p.stderr
        assert sorted(os.listdir(out)) == ["bad_exif.png", "good.png"]
    assert snapshot(*(album / f for f in os.listdir(album))) == before


# -----------------------------------------------------------------------------
# Valid files once refused: a JPEG without its end marker, a PNG with a large text chunk

def test_a_jpeg_missing_only_its_end_marker_and_a_png_with_a_large_text_chunk_are_read(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    sizes = {}
    for progressive in (False, True):
        buf = io.BytesIO()
        Image.fromarray(photo(40, 24, 3)).save(buf, "JPEG", quality=90, progressive=progressive)
        jpeg = buf.getvalue()
        kind = "progressive" if progressive else "baseline"
        (album / f"{kind}_no_end.jpg").write_bytes(jpeg[:-2])      # FF D9 gone
        (album / f"{kind}_half_end.jpg").write_bytes(jpeg[:-1])    # the FF of it there
        (album / f"{kind}_cut.jpg").write_bytes(jpeg[:-3])         # one byte of image data gone: truncated
        (album / f"{kind}_half.jpg").write_bytes(jpeg[: len(jpeg) // 2])
        sizes.update({f"{kind}_no_end.png": (40, 24), f"{kind}_half_end.png": (40, 24)})
    info = PngImagePlugin.PngInfo()
    info.add_text("history", "x" * 3_000_000, zip=True)  # a 3 MB zTXt chunk, over Pillow's 1 MB MAX_TEXT_CHUNK
    Image.fromarray(photo(20, 10, 4)).save(album / "big_text.png", pnginfo=info)
    sizes["big_text.png"] = (20, 10)
    before = snapshot(*(album / f for f in os.listdir(album)))
    p = run_cli("--infer", album, "--weights", weights, "--out", tmp_path / "out")
    assert p.returncode == 1 and "Traceback" not in p.stderr and "colorized 5 of 9" in p.stdout, p.stdout + p.stderr
    failed = _failed_lines(p.stderr)
    assert sorted(failed) == sorted(f"failed: {album / f'{kind}_{cut}.jpg'}: file is truncated or damaged "
                                    f"(the image data ends early)" for kind in ("baseline", "progressive")
                                    for cut in ("cut", "half")), p.stderr
    assert {f: Image.open(tmp_path / "out" / f).size for f in os.listdir(tmp_path / "out")} == sizes
    assert snapshot(*(album / f for f in os.listdir(album))) == before


# -----------------------------------------------------------------------------
# stdout or stderr closed, or on a full disk: the outputs are written, no traceback

@pytest.mark.parametrize("redirect, said", [
    (">/dev/full", "could not print the report to standard output (the disk is full)"),
    (">&-", "could not print the report to standard output (it is closed)"),
    ("2>&-", None), ("2>/dev/full", None), (">&- 2>&-", None), (">/dev/full 2>/dev/full", None)])
def test_a_closed_or_full_stdout_or_stderr_costs_the_report_not_the_outputs(tmp_path, weights, redirect, said):
    album = tmp_path / "album"
    make_photos(album, n=2, size=(16, 16))
    (album / "bad.png").write_text("not an image")
    before = snapshot(*(album / f for f in os.listdir(album)))
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, os.path.join(REPO, "colorize_base.py"), "--infer",
                                                    album, "--weights", weights, "--out", tmp_path / "out"])
    shown = tmp_path / "shown.txt"
    if "2>" not in redirect:
        redirect += f" 2>{shlex.quote(str(shown))}"
    elif ">" not in redirect.replace("2>", ""):
        redirect += f" >{shlex.quote(str(shown))}"
    p = subprocess.run(["bash", "-c", f"{command} {redirect}"], capture_output=True, text=True, timeout=300)
    text = shown.read_text() if shown.exists() else ""
    assert p.returncode == 1, text  # bad.png fails, and a lost report is 1 too
    assert "Traceback" not in text + p.stdout + p.stderr and "Exception ignored" not in text + p.stderr
    if said:
        assert f"failed: {album / 'bad.png'}: not an image" in text and text.strip().splitlines()[-1] == \
            f"error: {said}; the outputs were written", text
    elif "2>&-" in redirect.split(" ")[0] or "2>/dev/full" in redirect.split(" ")[0]:
        assert text == f"colorized 2 of 3 files into {tmp_path / 'out'}\n", text
    assert sorted(os.listdir(tmp_path / "out")) == ["p0.png", "p1.png"]
    assert snapshot(*(album / f for f in os.listdir(album))) == before


def test_a_device_this_tool_cannot_run_on_is_refused_in_one_line(weights):
    """The API takes a torch.device as the command line takes --device: cpu, cuda or cuda:N only."""
    import torch

    from colorizer import Colorizer
    for device in (torch.device("meta"), "meta", "mps"):
        with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N, got 'm"):
            Colorizer.load(weights, device=device)
    assert Colorizer.load(weights, device=torch.device("cpu")).device == "cpu"
