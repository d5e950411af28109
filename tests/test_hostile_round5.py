"""Issue 20, the fourth hostile round (tools/hostile_run.py): the classes it found unclean. Animations
and multi-page files say that only their first frame is used; --eval --hints has a bound; a model
file's network constants of the wrong type and tensors that do not fit the network are refused by
name (--infer, --export, soup.py); torch's warnings about a weights file are one line of ours; the
Python API names what it was given when it is not an image, refuses an empty PIL image and a
saturation beyond the command line's bound, and takes NumPy arrays of hints and colours; an .onnx
export makes its folder as a .pt export does."""
import io
import os
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from colorize_base import Colorizer
from conftest import REPO, photo, run_cli, tiny_checkpoint
from test_hostile_inputs import one_line_error
from test_hostile_round3 import snapshot


def run_soup(*args):
    """The real `python soup.py ARGS`, as run_cli runs colorize_base.py."""
    return subprocess.run([sys.executable, os.path.join(REPO, "soup.py"), *map(str, args)], capture_output=True, text=True)


def _warning_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("warning: ")]


# -----------------------------------------------------------------------------
# Animations and multi-page files: the first frame, said

@pytest.mark.parametrize("name", ["anim.gif", "anim.png", "pages.tif", "anim.webp"])
def test_a_file_of_several_frames_says_only_the_first_is_used(tmp_path, weights, name):
    frames = [Image.fromarray(photo(28, 20, s)) for s in range(3)]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    Image.fromarray(photo(24, 20, 9)).save(tmp_path / "still.png")
    before = snapshot(tmp_path / name, tmp_path / "still.png")
    p = run_cli("--infer", tmp_path / name, tmp_path / "still.png", "--weights", weights, "--out", tmp_path / "out")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert _warning_lines(p.stderr) == [f"warning: {tmp_path / name}: 3 frames (an animation or a multi-page file); "
                                        f"only the first is used"], p.stderr
    with Image.open(tmp_path / "out" / (os.path.splitext(name)[0] + ".png")) as out:
        assert out.size == (28, 20)
    assert snapshot(tmp_path / name, tmp_path / "still.png") == before


# -----------------------------------------------------------------------------
# --eval --hints N: bounded

def test_eval_hints_beyond_the_bound_is_one_line_naming_it(tmp_path):
    weights = tiny_checkpoint(tmp_path / "hints.pt", HINT_INPUT=True)
    (tmp_path / "photos").mkdir()
    Image.fromarray(photo(24, 20)).save(tmp_path / "photos" / "a.png")
    for n in ("65537", "1" + "0" * 20):
        p = run_cli("--eval", tmp_path / "photos", "--hints", n, "--weights", weights, "--out", tmp_path / "eval")
        one_line_error(p, f"--hints {n}: at most 65536 hints per photo")
    assert not (tmp_path / "eval").exists()


# -----------------------------------------------------------------------------
# Model files: network constants of the wrong type, tensors that do not fit

def _edited(weights, path, cfg=None, tensor=None):
    ckpt = torch.load(weights, weights_only=True)
    ckpt["cfg"].update(cfg or {})
    if tensor:
        ckpt["netG_ema"][tensor[0]] = tensor[1](ckpt["netG_ema"][tensor[0]])
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("key, value", [("SPECTRAL_NORM", "no"), ("NGF", "8"), ("NGF", 10 ** 6), ("ATTN_FACTORS", None),
                                        ("HINT_INPUT", 1), ("DROPOUT", 2.0), ("N_DOWNS", 99)])
def test_a_model_file_whose_network_constants_are_wrong_is_refused_by_name(tmp_path, weights, key, value):
    bad = _edited(weights, tmp_path / "bad.pt", cfg={key: value})
    Image.fromarray(photo(24, 20)).save(tmp_path / "a.png")
    before = snapshot(bad, tmp_path / "a.png")
    p = run_cli("--infer", tmp_path / "a.png", "--weights", bad, "--out", tmp_path / "out")
    one_line_error(p, f"{bad}: damaged model file: its constant {key} should be ", repr(value))
    if key == "SPECTRAL_NORM":  # --export and soup.py read a model file the same way
        one_line_error(run_cli("--export", tmp_path / "small.pt", "--weights", bad), f"{bad}: damaged model file: its constant {key}")
        one_line_error(run_soup(tmp_path / "soup.pt", weights, bad), f"{bad}: damaged model file: its constant {key}")
    assert not {"small.pt", "soup.pt", "out"} & set(os.listdir(tmp_path)) and snapshot(bad, tmp_path / "a.png") == before


def _first_float(weights):
    state = torch.load(weights, weights_only=True)["netG_ema"]
    return next(k for k, v in sorted(state.items()) if v.is_floating_point() and v.numel() > 1)


def test_tensors_that_do_not_fit_the_network_are_refused_naming_the_tensor(tmp_path, weights):
    name = _first_float(weights)
    Image.fromarray(photo(24, 20)).save(tmp_path / "a.png")
    for file, change, says in (("int.pt", lambda v: v.to(torch.int32), "torch.int32"),
                               ("shape.pt", lambda v: torch.zeros(1), "(1,)")):
        bad = _edited(weights, tmp_path / file, tensor=(name, change))
        p = run_cli("--infer", tmp_path / "a.png", "--weights", bad, "--out", tmp_path / "out")
        one_line_error(p, f"{bad}: weights do not fit the network its constants describe (incompatible configuration): {name!r} is ", says)
        one_line_error(run_soup(tmp_path / "soup.pt", weights, bad), f"{bad}: tensor {name!r}")
    assert not (tmp_path / "out").exists() and not (tmp_path / "soup.pt").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_plain_pickle_is_refused_in_one_line_and_never_run(tmp_path):
    bad = tmp_path / "evil.pt"
    bad.write_bytes(pickle.dumps({"cfg": {}, "netG_ema": _Evil()}, protocol=4))
    Image.fromarray(photo(24, 20)).save(tmp_path / "a.png")
    p = run_cli("--infer", tmp_path / "a.png", "--weights", bad, "--out", tmp_path / "out", cwd=tmp_path)
    one_line_error(p, f"{bad}: not a readable checkpoint")
    assert all(line.startswith(("warning: ", "error: ")) for line in p.stderr.strip().splitlines()), p.stderr
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


# -----------------------------------------------------------------------------
# The Python API

@pytest.fixture(scope="module")
def colorizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w")
    return (Colorizer.load(tiny_checkpoint(folder / "plain.pt"), device="cpu"),
            Colorizer.load(tiny_checkpoint(folder / "hints.pt", HINT_INPUT=True), device="cpu"))


def test_what_is_not_an_image_is_named_by_its_type(colorizers, tmp_path):
    c = colorizers[0]
    Image.fromarray(photo(24, 20)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    with open(tmp_path / "a.png", "rb") as f:
        for value, says in ((data, "got bytes b'\\x89PNG"), (f, "got BufferedReader"), (None, "got NoneType None"),
                            (object(), "got object")):
            with pytest.raises(ValueError, match="expected a file path, a PIL image or an image array") as e:
                c.colorize(value)
            assert says in str(e.value) and "\n" not in str(e.value), str(e.value)
    with pytest.raises(ValueError, match=r"PIL image of 0x0 pixels"):
        c.colorize(Image.new("L", (0, 0)))
    with pytest.raises(ValueError, match=r"PIL image of 5x0 pixels"):
        c.colorize(Image.new("RGB", (5, 0)))
    assert c.colorize(Image.open(io.BytesIO(data))).size == (24, 20)  # what the bytes message suggests
    assert (tmp_path / "a.png").read_bytes() == data


@pytest.mark.parametrize("saturation", [100.5, 1e30, 1e308, float("inf")])
def test_a_saturation_beyond_the_command_lines_bound_is_refused(colorizers, saturation):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy overflow warning on the way
        with pytest.raises(ValueError, match=r"saturation must be a number >= 0, got .* \(at most 100, as --saturation\)"):
            colorizers[0].colorize(photo(8, 8), saturation=saturation)
        assert colorizers[0].colorize(photo(8, 8), saturation=100).size == (8, 8)


def test_hints_and_colours_as_numpy_arrays_are_taken(colorizers):
    c = colorizers[1]
    img = photo(20, 16)
    as_lists = c.colorize(img, hints=[(3, 4, (200, 10, 10)), (10, 8, (10, 10, 200))])
    rows = np.array([[3, 4, "#c80a0a"], [10, 8, "#0a0ac8"]], dtype=object)
    assert np.array_equal(np.asarray(c.colorize(img, hints=rows)), np.asarray(as_lists))
    pixel = np.array([200, 10, 10], np.uint8)  # a colour read off an image array
    one = c.colorize(img, hints=[(3, 4, pixel), (10, 8, np.array([10, 10, 200]))])
    assert np.array_equal(np.asarray(one), np.asarray(as_lists))
    with pytest.raises(ValueError, match=r"hint 1: colour must be"):
        c.colorize(img, hints=[(3, 4, np.array([1, 2, 3, 4]))])
    assert np.array_equal(np.asarray(c.colorize(img, hints=np.zeros((0, 3)))), np.asarray(c.colorize(img)))


def test_a_bytes_path_loads_a_model(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.pt")
    assert Colorizer.load(os.fsencode(path), device="cpu").colorize(photo(8, 8)).size == (8, 8)


# -----------------------------------------------------------------------------
# --export model.onnx into a folder that does not exist yet

def test_an_onnx_export_makes_its_folder_as_a_pt_export_does(tmp_path, weights):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    for name in ("m.pt", "m.onnx"):
        out = tmp_path / name[2:] / "deeper" / name
        p = run_cli("--export", out, "--weights", weights)
        assert p.returncode == 0 and "Traceback" not in p.stderr and out.is_file(), p.stderr
        assert sorted(os.listdir(out.parent)) == [name]  # no temporary left
    p = run_cli("--export", tmp_path / "f" / "x.onnx", "--weights", tmp_path / "none.pt")
    one_line_error(p, "none.pt")
    assert not (tmp_path / "f").exists()  # refused before any folder is made


@pytest.mark.parametrize("args, said", [
    (["--infer", "x.jpg", "--render-size", "1e9"], "argument --render-size: invalid int value: '1e9'"),
    (["--infer", "x.jpg", "--spectral-norm", "maybe"], "expected true or false, got 'maybe'"),
    (["--infer", "x.jpg", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ([], "one of the arguments --train --infer --export --eval --serve is required"),
    (["--export", ""], "--export needs a file name"),
])
def test_command_line_refusals_are_one_line_not_the_usage(tmp_path, args, said):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and said in r.stderr and "usage:" not in r.stderr, r.stderr
