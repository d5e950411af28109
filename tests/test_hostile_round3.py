"""The third hostile round (issue 20), class by class: an output is never one of the inputs and
never replaces a pipe or device; soups refuse ingredients that do not fit; unreadable folders are
named and counted; hints files are small regular files; any depth of folders and JSON is one line
at worst; run-folder entries of the wrong kind and out-of-range constants are one-line refusals."""
import errno
import json
import os
import socket
import stat

import pytest
import torch
from PIL import Image

import colorize_base as cb
import data
import images
import soup
from checkpoint import load_checkpoint, save_checkpoint
from conftest import make_photos, photo, run_cli, tiny_checkpoint, train_args
from files import TMP_MARK, remove_stale_temporaries
from test_hostile_inputs import one_line_error


def one_line(err, *fragments):
    """stderr of an in-process cb.main / soup.main that refused: one 'error: ...' line with each fragment."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert sum(line.startswith("error: ") for line in lines) == 1 and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def snapshot(*paths):
    """What must not change: the bytes of each regular file, the kind of everything else."""
    return {str(p): open(p, "rb").read() if os.path.isfile(p) else stat.S_IFMT(os.lstat(p).st_mode) for p in paths}


# -----------------------------------------------------------------------------
# Data loss and silent corruption

def test_an_output_is_never_one_of_the_inputs_under_any_name(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    b = tiny_checkpoint(tmp_path / "b.pt", zero_output=True)
    (tmp_path / "link.pt").symlink_to(a)
    os.link(a, tmp_path / "hard.pt")
    (tmp_path / "sub").mkdir()
    before = snapshot(a, b)
    for out in (a, tmp_path / "link.pt", tmp_path / "hard.pt", tmp_path / "sub" / ".." / "a.pt"):
        one_line_error(run_cli("--export", out, "--weights", a), f"{os.path.abspath(out)}: ", "is also an input")
        assert soup.main([str(out), a, b]) == 2
        one_line(capsys.readouterr().err, f"{out}: ", "is also an input", a)
        assert soup.main([str(out), b, a]) == 2  # wherever it is among the ingredients
        one_line(capsys.readouterr().err, "is also an input")
    assert snapshot(a, b) == before and os.path.islink(tmp_path / "link.pt")
    assert not [f for f in os.listdir(tmp_path) if TMP_MARK in f]


def test_eval_reports_and_infer_outputs_never_replace_an_input(tmp_path, capsys, weights):
    album = tmp_path / "album"
    make_photos(album, n=2)
    Image.fromarray(photo(32, 32, 7)).save(album / "sheet.png")  # a photo named like the --eval report
    before = snapshot(*(album / f for f in os.listdir(album)))
    assert cb.main(["--eval", str(album), "--weights", weights, "--out", str(album)]) == 2
    one_line(capsys.readouterr().err, str(album / "sheet.png"), "is also an input")
    assert snapshot(*(album / f for f in os.listdir(album))) == before
    # --hints FILE named like the photo's output, in --out: the output goes beside it, not over it
    Image.fromarray(photo(32, 32, 8)).save(tmp_path / "x.jpg")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.png").write_text('{"hints": [{"x": 1, "y": 1, "color": "#ff0000"}]}')
    hints = (tmp_path / "out" / "x.png").read_bytes()
    assert cb.main(["--infer", str(tmp_path / "x.jpg"), "--hints", str(tmp_path / "out" / "x.png"),
                    "--weights", tiny_checkpoint(tmp_path / "h.pt", HINT_INPUT=True), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "x.png").read_bytes() == hints and (tmp_path / "out" / "x_1.png").exists()
    capsys.readouterr()


def test_weights_that_are_not_a_regular_file_are_named_as_such(tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.pt")
    for path in (str(tmp_path / "fifo.pt"), "/dev/zero"):
        assert cb.main(["--export", str(tmp_path / "e.pt"), "--weights", path]) == 2
        one_line(capsys.readouterr().err, f"{path}: not a regular file")
    assert not (tmp_path / "e.pt").exists()


def test_soup_refuses_ingredients_whose_tensors_differ_naming_both(tmp_path, capsys):
    a = tiny_checkpoint(tmp_path / "a.pt")
    ckpt = load_checkpoint(a)
    key = next(k for k, v in ckpt["netG_ema"].items() if v.dim() == 4 and v.shape[1] > 1)
    state = dict(ckpt["netG_ema"])
    state[key] = state[key][:, :1].clone()  # (C, 1, k, k): broadcasts against (C, n, k, k)
    save_checkpoint({**ckpt, "netG_ema": state}, str(tmp_path / "narrow.pt"))
    missing = {k: v for k, v in ckpt["netG_ema"].items() if k != key}
    save_checkpoint({**ckpt, "netG_ema": missing}, str(tmp_path / "missing.pt"))
    extra = {**ckpt["netG_ema"], "extra.weight": torch.zeros(2)}
    save_checkpoint({**ckpt, "netG_ema": extra}, str(tmp_path / "extra.pt"))
    for bad, why in (("narrow.pt", "has shape"), ("missing.pt", "is in"), ("extra.pt", "extra.weight")):
        for order in ([a, str(tmp_path / bad)], [a, a, str(tmp_path / bad)]):
            assert soup.main([str(tmp_path / "s.pt"), *order]) == 2
            one_line(capsys.readouterr().err, str(tmp_path / bad), why)
    assert soup.main([str(tmp_path / "s.pt"), a, str(tmp_path / "narrow.pt")]) == 2
    assert repr(key) in capsys.readouterr().err
    assert not (tmp_path / "s.pt").exists()
    # an "about" that is not text is left out, not a TypeError
    save_checkpoint({**ckpt, "about": 42}, str(tmp_path / "about.pt"))
    assert soup.main([str(tmp_path / "s.pt"), a, str(tmp_path / "about.pt")]) == 0
    assert "about" not in load_checkpoint(str(tmp_path / "s.pt"))
    capsys.readouterr()


def test_export_soup_and_infer_never_replace_a_pipe_socket_device_or_folder(tmp_path, capsys, weights):
    os.mkfifo(tmp_path / "fifo.pt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock.pt"))
    (tmp_path / "null.pt").symlink_to(os.devnull)  # a device, reached through a link
    (tmp_path / "folder.pt").mkdir()
    targets = [tmp_path / n for n in ("fifo.pt", "sock.pt", "null.pt", "folder.pt")]
    try:
        before = snapshot(*targets, os.devnull)
        for target in targets:
            assert cb.main(["--export", str(target), "--weights", weights]) == 2
            one_line(capsys.readouterr().err, str(target))
            assert soup.main([str(target), weights, weights]) == 2
            one_line(capsys.readouterr().err, str(target))
        assert snapshot(*targets, os.devnull) == before
        # --infer: an output name taken by a pipe fails that photo only, and leaves the pipe
        make_photos(tmp_path / "album", n=2)
        (tmp_path / "out").mkdir()
        os.mkfifo(tmp_path / "out" / "p0.png")
        p = run_cli("--infer", tmp_path / "album", "--weights", weights, "--out", tmp_path / "out", timeout=120)
        assert p.returncode == 1 and "colorized 1 of 2" in p.stdout and "Traceback" not in p.stderr, p.stderr
        assert f"failed: {tmp_path / 'album' / 'p0.png'}: " in p.stderr and "not a regular file" in p.stderr
        assert stat.S_ISFIFO(os.lstat(tmp_path / "out" / "p0.png").st_mode) and (tmp_path / "out" / "p1.png").exists()
    finally:
        sock.close()


def _unreadable(monkeypatch, *folders):
    """Make os.scandir fail with EACCES on folders, as it does for a user without read permission
    (root, who runs these tests, can read any folder)."""
    real, denied = os.scandir, {os.path.abspath(f) for f in folders}

    def scandir(path="."):
        if os.path.abspath(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_subfolder_is_named_counted_and_fails_the_batch(tmp_path, capsys, monkeypatch, weights):
    album = tmp_path / "album"
    make_photos(album, n=2)
    make_photos(album / "locked", n=2)
    make_photos(album / "open" / "locked too", n=1)
    _unreadable(monkeypatch, album / "locked", album / "open" / "locked too")
    for inputs in ([str(album)], [f"{album}/**/*.png"]):
        assert cb.main(["--infer", *inputs, "--weights", weights, "--out", str(tmp_path / "out")]) == 1
        out, err = capsys.readouterr()
        assert "colorized 2 of 2 files" in out and "2 folder(s) could not be read" in out, out
        assert f"failed: {album / 'locked'}: cannot read this folder (permission denied)" in err, err
        assert f"failed: {album / 'open' / 'locked too'}: cannot read this folder" in err, err
        assert "Traceback" not in err
    assert sorted(os.listdir(tmp_path / "out")) == ["p0.png", "p1.png"]
    # --eval: scored without them, each a failed row, exit 1
    assert cb.main(["--eval", str(album), "--weights", weights, "--out", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "failed: locked: cannot read this folder" in err and "failed: open/locked too: " in err, err
    assert "locked,failed" in (tmp_path / "eval" / "metrics.csv").read_text()
    # --train's scan: a warning naming each, and counted with the unreadable files
    cfg = {**cb.CONSTANTS, "DATA_DIR": str(album), "VAL_DIR": "", "MAX_PIXELS": 10_000, "NUM_SAMPLES": 1}
    logged = []
    train_files, _ = data.split_files(cfg, logged.append)
    assert len(train_files) == 2  # 2 found, too few to hold one out
    assert any(f"skipping the folder {album / 'locked'}: cannot read it (permission denied)" in m for m in logged)
    assert any("2 unreadable skipped" in m for m in logged), logged
    capsys.readouterr()
    # the whole input unreadable: one line, nothing written
    _unreadable(monkeypatch, album)
    assert cb.main(["--eval", str(album), "--weights", weights, "--out", str(tmp_path / "eval2")]) == 2
    one_line(capsys.readouterr().err, str(album), "permission denied")
    assert not (tmp_path / "eval2").exists()


# -----------------------------------------------------------------------------
# Hangs and unbounded reads

def test_a_hints_file_must_be_a_small_regular_file(tmp_path, weights):
    Image.fromarray(photo(32, 32, 1)).save(tmp_path / "x.png")
    os.mkfifo(tmp_path / "fifo.json")
    with open(tmp_path / "sparse.json", "wb") as f:
        f.truncate(10 ** 10)  # 10 GB, taking no space
    (tmp_path / "big.json").write_text(json.dumps({"hints": [{"x": 1, "y": 1, "color": "#ffffff"}] * 40_000}))
    (tmp_path / "folder.json").mkdir()
    cases = {tmp_path / "fifo.json": "not a regular file", "/dev/zero": "not a regular file",
             tmp_path / "sparse.json": "1 MB", tmp_path / "big.json": "1 MB", tmp_path / "folder.json": "folder"}
    for hints, why in cases.items():
        p = run_cli("--infer", tmp_path / "x.png", "--hints", hints, "--weights", weights, "--out", tmp_path / "out",
                    timeout=60)  # a FIFO opened for reading would block here for ever
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        failed = [line for line in p.stderr.splitlines() if line.startswith("failed: ")]
        assert len(failed) == 1 and f"{hints}: " in failed[0] and why in failed[0], p.stderr
    # a sidecar that is a pipe: that photo fails by name, the others are colorized
    album = tmp_path / "album"
    make_photos(album, n=2)
    os.mkfifo(album / "p0.hints.json")
    p = run_cli("--infer", album, "--weights", weights, "--out", tmp_path / "out2", timeout=60)
    assert p.returncode == 1 and "colorized 1 of 2" in p.stdout, p.stdout + p.stderr
    assert f"failed: {album / 'p0.png'}: {album / 'p0.hints.json'}: not a regular file" in p.stderr, p.stderr
    assert stat.S_ISFIFO(os.stat(album / "p0.hints.json").st_mode)


def test_a_deeply_nested_hints_file_is_one_line_naming_it(tmp_path, capsys):
    from files import UserError
    from hints import read_hints
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "deep_x.json").write_text('{"hints": [{"x": ' + "[" * 900 + "]" * 900 + ', "y": 1, "color": "#fff"}]}')
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + b'{"hints": []}')
    with pytest.raises(UserError, match=f"{tmp_path / 'deep.json'}: not a valid hints file: nested too deeply"):
        read_hints(str(tmp_path / "deep.json"))
    with pytest.raises(UserError) as e:
        read_hints(str(tmp_path / "deep_x.json"))
    assert str(tmp_path / "deep_x.json") in str(e.value) and len(str(e.value)) < 300
    assert read_hints(str(tmp_path / "bom.json")) == []


# -----------------------------------------------------------------------------
# Tracebacks and wrong messages

def _deep_folder(top, levels):
    """top/d/d/.../d, levels deep, made without recursion; returns the deepest folder."""
    path = str(top)
    os.mkdir(path)
    for _ in range(levels):
        path = os.path.join(path, "d")
        os.mkdir(path)
    return path


def _remove_deep(top):
    """rmtree recurses once per level too: remove bottom-up in a loop."""
    stack = [str(top)]
    while stack:
        path = stack[-1]
        children = [os.path.join(path, e) for e in os.listdir(path)]
        dirs = [c for c in children if os.path.isdir(c) and not os.path.islink(c)]
        if dirs:
            stack += dirs
            continue
        for c in children:
            os.remove(c)
        os.rmdir(path)
        stack.pop()


def test_a_folder_1100_levels_deep_is_searched_to_the_bottom(tmp_path, capsys, weights):
    top = tmp_path / "deep"
    try:
        bottom = _deep_folder(top, 1100)
        Image.fromarray(photo(32, 32, 1)).save(top / "top.png")
        Image.fromarray(photo(32, 32, 2)).save(os.path.join(bottom, "bottom.png"))
        for inputs in ([str(top)], [f"{top}/**/*.png"]):
            assert len(images.find_images(inputs)) == 2
        assert cb.main(["--infer", str(top), "--weights", weights, "--out", str(tmp_path / "out")]) == 0
        out, err = capsys.readouterr()
        assert "colorized 2 of 2 files" in out and "Traceback" not in err, out + err
        assert os.path.isfile(os.path.join(tmp_path / "out", *["d"] * 1100, "bottom.png"))
        good, n_bad, _ = data.scan_images([str(top)], 10_000, log=print)  # --train's scan
        assert len(good) == 2 and n_bad == 0
    finally:
        for folder in (top, tmp_path / "out"):
            if folder.exists():
                _remove_deep(folder)


@pytest.mark.parametrize("name, make, kind", [
    ("samples", lambda p: p.write_text("notes"), "a file"),
    ("log.csv", lambda p: p.mkdir(), "a folder"),
    ("checkpoint.pt", lambda p: p.mkdir(), "a folder"),
    ("lock", os.mkfifo, "a pipe"),  # opening a FIFO to write would block
])
def test_a_run_folder_entry_of_the_wrong_kind_is_one_line_and_left_alone(tmp_path, capsys, name, make, kind):
    data_dir, run_dir = make_photos(tmp_path / "data", n=4), tmp_path / "run"
    run_dir.mkdir()
    make(run_dir / name)
    before = snapshot(run_dir / name)
    assert cb.main(train_args(data_dir, run_dir, 1)) == 2
    one_line(capsys.readouterr().err, f"{run_dir / name}: is {kind}", "--run-dir")
    assert snapshot(run_dir / name) == before and sorted(os.listdir(run_dir)) == [name]


def test_only_real_stale_temporaries_are_removed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / f".checkpoint.pt{TMP_MARK}123").write_bytes(b"half a checkpoint")   # removed
    (run_dir / f".checkpoint.pt{TMP_MARK}456").mkdir()                             # a folder: kept, one line
    (run_dir / f".checkpoint.pt{TMP_MARK}456" / "mine.txt").write_text("keep")
    (run_dir / f".notes{TMP_MARK}_draft").write_text("keep")                       # not our name: kept
    (run_dir / f".link{TMP_MARK}7").symlink_to(tmp_path / "elsewhere")            # a link: kept
    logged = []
    remove_stale_temporaries(str(run_dir), logged.append)
    assert sorted(os.listdir(run_dir)) == [f".checkpoint.pt{TMP_MARK}456", f".link{TMP_MARK}7",
                                           f".notes{TMP_MARK}_draft"]
    assert (run_dir / f".checkpoint.pt{TMP_MARK}456" / "mine.txt").read_text() == "keep"
    assert len(logged) == 3 and sum("left" in m and "alone" in m for m in logged) == 2, logged
    # and a training run there starts, keeps them, and trains
    assert cb.main(train_args(make_photos(tmp_path / "data", n=4), run_dir, 1)) == 0
    assert (run_dir / f".checkpoint.pt{TMP_MARK}456" / "mine.txt").exists()
    assert load_checkpoint(str(run_dir / "checkpoint.pt"))["step"] == 1
    capsys.readouterr()


@pytest.mark.parametrize("args, flag", [
    (["--lr-g", "1e308"], "--lr-g"), (["--lr-d", "2"], "--lr-d"), (["--ngf", "1000000"], "--ngf"),
    (["--ndf", "100000"], "--ndf"), (["--size", "16384"], "--image-size"), (["--threads", "4096"], "--threads"),
    (["--batch-size", "1000000"], "--batch-size"), (["--render-size", "100000"], "--render-size"),
    (["--num-workers", "10000"], "--num-workers"), (["--eval-size", "10000000"], "--eval-size"),
    (["--num-d", "100"], "--num-d"), (["--n-layers-d", "64"], "--n-layers-d"),
    (["--num-samples", "100000"], "--num-samples"), (["--max-pixels", str(10 ** 12)], "--max-pixels"),
    (["--hint-patch", "100000"], "--hint-patch"), (["--lambda-l1", "1e300"], "--lambda-l1"),
    (["--saturation", "1e300"], "--saturation"), (["--epochs", str(10 ** 15)], "--epochs"),
    (["--steps", str(10 ** 18)], "--max-steps"), (["--hint-lr-mult", "1e9"], "--hint-lr-mult"),
])
def test_size_like_constants_have_upper_bounds(capsys, args, flag):
    assert cb.main(["--infer", "nothing.jpg", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag} must be at most ") and len(err.strip().splitlines()) == 1, err


def test_the_largest_allowed_values_pass_the_check():
    cfg = {**cb.CONSTANTS, "IMAGE_SIZE": 4096, "NGF": 1024, "THREADS": 1024, "LR_G": 1.0, "BATCH_SIZE": 4096,
           "RENDER_SIZE": 8192, "NUM_WORKERS": 256, "SATURATION": 100.0}
    cb.check_config(cfg)
