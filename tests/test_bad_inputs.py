"""Every bad input gets a clear message naming the file, and the rest of the work goes on."""
import csv
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import colorize_base as cb
from checkpoint import load_checkpoint, load_generator
from colorizer import output_paths
from conftest import TEST_MAX_PIXELS, make_bad_inputs, make_good_inputs, photo, run_cli
from data import scan_images
from files import UserError
from images import BadImageError, find_images, load_image

# -----------------------------------------------------------------------------
# load_image / find_images / scan_images: the pieces --infer, --eval and training share

def test_load_image_accepts_every_awkward_good_kind(tmp_path):
    for rel, (w, h, has_alpha) in make_good_inputs(str(tmp_path)).items():
        rgb, alpha = load_image(str(tmp_path / rel), TEST_MAX_PIXELS)
        assert rgb.shape == (h, w, 3) and rgb.dtype == np.float32, rel
        assert 0 <= rgb.min() and rgb.max() <= 1, rel
        assert (alpha is not None) == has_alpha, rel


def test_load_image_refuses_each_bad_kind_naming_file_and_reason(tmp_path):
    for rel, reason in make_bad_inputs(str(tmp_path)).items():
        path = str(tmp_path / rel)
        with pytest.raises(BadImageError) as e:
            load_image(path, TEST_MAX_PIXELS)
        assert str(e.value).startswith(path + ": ") and reason in str(e.value), str(e.value)


def test_truncated_jpeg_is_not_loaded_partially(tmp_path):
    make_bad_inputs(str(tmp_path))
    with pytest.raises(BadImageError, match="truncated or damaged"):
        load_image(str(tmp_path / "truncated.jpg"))


def test_pixel_limit_is_configurable(tmp_path):
    make_bad_inputs(str(tmp_path))
    rgb, _ = load_image(str(tmp_path / "over_limit.png"), max_pixels=80 * 80)  # exactly at the limit: fine
    assert rgb.shape == (80, 80, 3)
    with pytest.raises(BadImageError, match=r"over_limit.png: 80x80 = 6400 pixels is over the limit of 6399"):
        load_image(str(tmp_path / "over_limit.png"), max_pixels=80 * 80 - 1)


def test_exif_rotation_and_first_gif_frame_are_applied(tmp_path):
    make_good_inputs(str(tmp_path))
    stored = np.asarray(Image.open(tmp_path / "exif_rotated.jpg").convert("RGB"), dtype=np.float32) / 255
    rgb, _ = load_image(str(tmp_path / "exif_rotated.jpg"))
    assert np.abs(rgb - np.rot90(stored, k=-1)).mean() < 0.02  # orientation 6: 90 degrees clockwise
    with Image.open(tmp_path / "animated.gif") as gif:
        assert gif.n_frames == 3
        first = np.asarray(gif.convert("RGB"), dtype=np.float32) / 255
    assert np.array_equal(load_image(str(tmp_path / "animated.gif"))[0], first)


def test_missing_and_odd_paths(tmp_path):
    with pytest.raises(BadImageError, match="does not exist"):
        load_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([str(tmp_path / "nope")])
    make_good_inputs(str(tmp_path))
    assert str(tmp_path / "sub folder" / "fötö ñandú 1.jpg") in find_images([str(tmp_path / "sub folder")])
    assert str(tmp_path / "animated.gif") in find_images([str(tmp_path)])


def test_scan_images_skips_bad_files_with_one_warning_each(tmp_path):
    make_good_inputs(str(tmp_path))
    bad = make_bad_inputs(str(tmp_path))
    warnings = []
    good, n_bad, n_gray = scan_images([str(tmp_path)], TEST_MAX_PIXELS, warnings.append)
    assert n_bad == len(bad) == len(warnings)
    for rel, reason in bad.items():
        assert sum(str(tmp_path / rel) in w and reason in w for w in warnings) == 1, (rel, warnings)
    assert n_gray == 2  # the 16-bit and the LA png are gray: left out of training, not errors
    assert len(good) == 10


# -----------------------------------------------------------------------------
# Output paths

def test_outputs_mirror_folders_and_never_overwrite_inputs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    files = [str(a / "x.jpg"), str(a / "x.png"), str(b / "x.jpg")]
    out = output_paths([str(tmp_path)], files, str(a))  # --out is an input folder
    assert len(set(out.values())) == 3
    assert not set(out.values()) & set(files)
    assert out[str(b / "x.jpg")] == str(a / "b" / "x.png")  # mirrored under --out
    loose = output_paths(files, files, str(tmp_path / "out"))  # files named one by one
    assert len(set(loose.values())) == 3


# -----------------------------------------------------------------------------
# --infer over a folder holding every bad kind and the good ones

def test_infer_writes_every_good_file_and_lists_every_bad_one(tmp_path, weights, capsys):
    mixed = tmp_path / "in put ü"
    good = make_good_inputs(str(mixed))
    bad = make_bad_inputs(str(mixed))
    missing = str(tmp_path / "does_not_exist")
    out = tmp_path / "out"
    rc = cb.main(["--infer", str(mixed), missing, "--weights", weights, "--out", str(out),
                  "--max-pixels", str(TEST_MAX_PIXELS), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"colorized {len(good)} of {len(good) + len(bad) + 1} files" in captured.out
    for rel, (w, h, has_alpha) in good.items():
        with Image.open(out / (os.path.splitext(rel)[0] + ".png")) as img:
            assert img.size == (w, h), rel
            assert img.mode == ("RGBA" if has_alpha else "RGB"), rel
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == len(bad) + 1
    for rel, reason in bad.items():
        assert any(line.startswith(f"failed: {mixed / rel}: ") and reason in line for line in failed), rel
    assert any(missing in line and "no such file" in line for line in failed)
    assert "Traceback" not in captured.err


def test_eval_scores_every_good_file_and_lists_every_bad_one(tmp_path, weights, capsys):
    mixed = tmp_path / "in put ü"
    good = make_good_inputs(str(mixed))
    bad = make_bad_inputs(str(mixed))
    out = tmp_path / "eval"
    rc = cb.main(["--eval", str(mixed), "--weights", weights, "--out", str(out),
                  "--max-pixels", str(TEST_MAX_PIXELS), "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1
    failed = [line for line in captured.err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == len(bad)
    for rel, reason in bad.items():
        assert any(line.startswith(f"failed: {rel}: ") and reason in line for line in failed), rel
    with open(out / "metrics.csv") as f:
        status = {row["file"]: row["status"] for row in csv.DictReader(f)}
    assert {rel for rel in good} <= set(status)  # every good file was read: scored, or left out as gray
    assert all(status[rel] in ("ok", "gray") for rel in good)
    assert "Traceback" not in captured.err


def test_infer_keeps_alpha(tmp_path, weights):
    good = make_good_inputs(str(tmp_path / "in"))
    assert cb.main(["--infer", str(tmp_path / "in" / "gray_alpha_la.png"), "--weights", weights,
                    "--out", str(tmp_path / "out")]) == 0
    la = np.asarray(Image.open(tmp_path / "in" / "gray_alpha_la.png"))[..., 1]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "gray_alpha_la.png"))[..., 3], la)
    assert good


def test_infer_output_written_next_to_input_never_replaces_it(tmp_path, weights):
    Image.fromarray(photo(32, 32, 1)).save(tmp_path / "x.png")
    Image.fromarray(photo(32, 32, 2)).save(tmp_path / "x.jpg")
    before = (tmp_path / "x.png").read_bytes()
    assert cb.main(["--infer", str(tmp_path), "--weights", weights, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "x.png").read_bytes() == before
    assert (tmp_path / "x_1.png").exists() and (tmp_path / "x_2.png").exists()


def test_infer_one_unwritable_output_does_not_stop_the_others(tmp_path, weights, capsys):
    make_good_inputs(str(tmp_path / "in"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").write_text("a file where the output folder a/ should go")
    rc = cb.main(["--infer", str(tmp_path / "in"), "--weights", weights, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"failed: {tmp_path / 'in' / 'a' / 'same.jpg'}: " in err and "cannot write the output" in err
    assert (tmp_path / "out" / "b" / "same.png").exists() and (tmp_path / "out" / "plain.png").exists()


def test_output_folder_that_cannot_be_created(tmp_path, weights):
    make_good_inputs(str(tmp_path / "in"))
    (tmp_path / "blocker").write_text("not a folder")
    p = run_cli("--infer", tmp_path / "in", "--weights", weights, "--out", tmp_path / "blocker" / "out")
    err = p.stderr
    assert p.returncode == 2
    assert f"cannot create output folder {tmp_path / 'blocker' / 'out'}" in err
    assert "Traceback" not in err


# -----------------------------------------------------------------------------
# Weights files

def bad_weights(folder, weights):
    """{file: reason substring} for weights files that must be refused."""
    data = open(weights, "rb").read()
    made = {}
    path = os.path.join(folder, "truncated.pt")
    open(path, "wb").write(data[: len(data) // 2])
    made[path] = "not a readable checkpoint"
    path = os.path.join(folder, "text.pt")
    open(path, "w").write("hello")
    made[path] = "not a readable checkpoint"
    path = os.path.join(folder, "other_tensors.pt")
    torch.save({"weight": torch.zeros(3)}, path)
    made[path] = "not a checkpoint of this tool"
    ckpt = torch.load(weights, weights_only=True)
    path = os.path.join(folder, "incompatible.pt")
    torch.save({**ckpt, "cfg": {**ckpt["cfg"], "NGF": 16}}, path)
    made[path] = "incompatible configuration"
    return made


def test_bad_weights_are_refused_by_name(tmp_path, weights):
    for path, reason in bad_weights(str(tmp_path), weights).items():
        with pytest.raises(UserError, match=reason) as e:
            load_generator(path, torch.device("cpu"))
        assert str(e.value).startswith(path + ": ")
    with pytest.raises(UserError, match="does not exist"):
        load_generator(str(tmp_path / "nope.pt"), torch.device("cpu"))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_weights_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"cfg": {}, "netG_ema": {}, "payload": _RunsCode(str(marker))}, path, pickle_module=pickle)
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_cli_bad_weights_message_has_no_traceback_unless_debug(tmp_path, weights):
    make_good_inputs(str(tmp_path / "in"))
    bad = str(tmp_path / "truncated.pt")
    open(bad, "wb").write(open(weights, "rb").read()[:1000])
    args = ["--infer", str(tmp_path / "in" / "plain.jpg"), "--weights", bad, "--out", str(tmp_path / "out")]
    p = run_cli(*args)
    assert p.returncode == 2 and p.stderr.startswith(f"error: {bad}: not a readable checkpoint")
    assert "Traceback" not in p.stderr
    p = run_cli(*args, "--debug")
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_any_decoder_failure_becomes_a_named_bad_image(tmp_path, monkeypatch):
    Image.fromarray(photo(8, 8)).save(tmp_path / "x.png")

    def broken_load(self):
        raise IndexError("list index out of range")  # what a damaged file can make a decoder do
    monkeypatch.setattr(Image.Image, "load", broken_load)
    with pytest.raises(BadImageError, match=r"x.png: not a readable image \(list index out of range\)"):
        load_image(str(tmp_path / "x.png"))
