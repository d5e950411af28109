"""What a hostile or unlucky user can do, and what must happen: never touch an input, never hang,
one line and a non-zero exit for every refusal, nothing half-written."""
import errno
import os
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import colorize_base as cb
from checkpoint import load_checkpoint
from conftest import REPO, make_photos, photo, run_cli, saved_step, train_args
from files import UserError, atomic_write


def one_line_error(p, *fragments):
    """The process refused with exit code 2, no traceback, and one 'error: ...' line (the last one,
    after any progress bars) holding each fragment."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr and sum(line.startswith("error: ") for line in lines) == 1, p.stderr
    assert lines[-1].startswith("error: "), p.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


# -----------------------------------------------------------------------------
# Never touch an input

def test_out_symlinked_to_the_input_folder_never_overwrites_a_photo(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    Image.fromarray(photo(32, 32, 1)).save(album / "x.png")
    before = (album / "x.png").read_bytes()
    (tmp_path / "link").symlink_to(album)                  # --out is the album under another name
    (tmp_path / "inside").symlink_to(album / "sub", target_is_directory=True)
    (album / "sub").mkdir()
    Image.fromarray(photo(32, 32, 2)).save(album / "sub" / "y.png")
    before_y = (album / "sub" / "y.png").read_bytes()
    for out in ("link", "inside"):
        p = run_cli("--infer", album, "--weights", weights, "--out", tmp_path / out)
        assert p.returncode == 0, p.stderr
        assert (album / "x.png").read_bytes() == before and (album / "sub" / "y.png").read_bytes() == before_y
    assert (album / "x_1.png").exists() and (album / "sub" / "y_1.png").exists()


def test_a_hard_link_to_an_input_is_not_written_through(tmp_path, weights):
    Image.fromarray(photo(32, 32, 1)).save(tmp_path / "x.jpg")
    (tmp_path / "out").mkdir()
    os.link(tmp_path / "x.jpg", tmp_path / "out" / "x.png")  # the output name is the input file itself
    before = (tmp_path / "x.jpg").read_bytes()
    assert run_cli("--infer", tmp_path / "x.jpg", "--weights", weights, "--out", tmp_path / "out").returncode == 0
    assert (tmp_path / "x.jpg").read_bytes() == before and (tmp_path / "out" / "x_1.png").exists()


# -----------------------------------------------------------------------------
# Never hang

def test_fifo_and_socket_in_an_input_folder_are_named_not_read(tmp_path, weights):
    album = tmp_path / "album"
    album.mkdir()
    Image.fromarray(photo(32, 32, 1)).save(album / "good.png")
    os.mkfifo(album / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(album / "sock.png"))
    try:
        for inputs in ([album], [album / "pipe.jpg", album / "good.png"]):
            p = run_cli("--infer", *inputs, "--weights", weights, "--out", tmp_path / "out", timeout=60)
            assert p.returncode == 1 and "colorized 1 of" in p.stdout, p.stdout + p.stderr
            assert f"failed: {album / 'pipe.jpg'}: not a regular file" in p.stderr
    finally:
        sock.close()
    assert f"failed: {album / 'sock.png'}: not a regular file" in run_cli(
        "--infer", album, "--weights", weights, "--out", tmp_path / "out", timeout=60).stderr
    p = run_cli("--infer", "/dev/zero", "--weights", weights, "--out", tmp_path / "out", timeout=60)  # a device
    assert p.returncode == 1 and "failed: /dev/zero: not a regular file" in p.stderr


def test_recursive_glob_over_symlink_loops_ends_and_takes_each_file_once(tmp_path, weights):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    Image.fromarray(photo(32, 32, 1)).save(root / "a" / "x.png")
    (root / "a" / "loop1").symlink_to(root / "a")       # two loops in one folder: 2**40 paths for glob.glob
    (root / "a" / "loop2").symlink_to(root)
    (root / "b").symlink_to(root / "a")
    p = run_cli("--infer", f"{root}/**/*.png", "--weights", weights, "--out", tmp_path / "out", timeout=60)
    assert p.returncode == 0 and "colorized 1 of 1 files" in p.stdout, p.stdout + p.stderr


# -----------------------------------------------------------------------------
# One line, no traceback, non-zero exit

@pytest.mark.parametrize("args, flag", [
    (["--lr-g", "nan"], "--lr-g"), (["--lr-d", "-0.001"], "--lr-d"), (["--lr-g", "0"], "--lr-g"),
    (["--beta1", "1"], "--beta1"), (["--beta2", "-0.5"], "--beta2"), (["--num-samples", "0"], "--num-samples"),
    (["--num-workers", "-1"], "--num-workers"), (["--seed", "-1"], "--seed"), (["--seed", str(2 ** 64)], "--seed"),
    (["--device", "mps"], "--device"), (["--device", "meta"], "--device"), (["--attn-factors", "3"], "--attn-factors"),
    (["--attn-factors", "64"], "--attn-factors"), (["--steps", "-5"], "--max-steps"), (["--lambda-l1", "inf"], "--lambda-l1"),
    (["--lambda-fm", "-1"], "--lambda-fm"), (["--ema-decay", "nan"], "--ema-decay"), (["--eval-size", "-2"], "--eval-size"),
])
def test_out_of_range_constants_are_one_line_errors(tmp_path, capsys, args, flag):
    rc = cb.main(train_args(make_photos(tmp_path / "data", n=2), tmp_path / "run", 1, *args))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {flag} must be ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_out_of_range_constant_through_the_real_command_line(tmp_path):
    one_line_error(run_cli("--infer", "x.jpg", "--device", "mps"), "--device must be auto, cpu, cuda or cuda:N")


def test_perceptual_loss_without_usable_vgg_weights_is_a_one_line_error(tmp_path):
    data = make_photos(tmp_path / "data", n=4)
    one_line_error(run_cli(*train_args(data, tmp_path / "run", 1, "--lambda-vgg", "1")),
                   "--lambda-vgg 1.0", "VGG19 weights", "downloads nothing")
    (tmp_path / "vgg.pth").write_text("not weights")
    one_line_error(run_cli(*train_args(data, tmp_path / "run", 1, "--lambda-vgg", "1", "--vgg-weights",
                                       tmp_path / "vgg.pth")), "--lambda-vgg 1.0", str(tmp_path / "vgg.pth"))


def test_weights_with_fields_of_the_wrong_type_or_nan_tensors_are_refused(tmp_path, weights):
    Image.fromarray(photo(32, 32, 1)).save(tmp_path / "x.png")
    ckpt = torch.load(weights, weights_only=True)
    nan_state = {k: v.clone() for k, v in ckpt["netG_ema"].items()}
    name = next(k for k, v in nan_state.items() if v.is_floating_point() and v.numel() > 1)
    nan_state[name][0] = float("nan")
    cases = {"version.pt": ({**ckpt, "format_version": "1"}, "format_version should be a whole number"),
             "step.pt": ({**ckpt, "step": 2.5}, "step should be a whole number"),
             "notensor.pt": ({**ckpt, "netG_ema": {**ckpt["netG_ema"], name: "x"}}, "is not a tensor"),
             "nan.pt": ({**ckpt, "netG_ema": nan_state}, "holds NaN or Inf")}
    for file, (obj, reason) in cases.items():
        torch.save(obj, tmp_path / file)
        for mode in (["--infer", tmp_path / "x.png", "--out", tmp_path / "out"], ["--export", tmp_path / "e.pt"]):
            one_line_error(run_cli(*mode, "--weights", tmp_path / file), f"{tmp_path / file}: ", reason)
    assert not (tmp_path / "out").exists() and not (tmp_path / "e.pt").exists()


def _limit_file_size(limit):
    """preexec_fn: files this process writes may not grow past limit bytes (a disk that fills up)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_full_disk_during_a_checkpoint_save_keeps_the_previous_one(tmp_path):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    assert run_cli(*train_args(data, run_dir, 2)).returncode == 0
    size = os.path.getsize(run_dir / "checkpoint.pt")
    p = run_cli(*train_args(data, run_dir, 4), preexec_fn=_limit_file_size(size // 2))
    one_line_error(p, f"cannot write the checkpoint {run_dir / 'checkpoint.pt'}: ", "the previous checkpoint is kept")
    assert saved_step(run_dir) == 2
    assert not [f for f in os.listdir(run_dir) if ".tmp" in f]


def test_full_disk_during_export_and_eval_report_leaves_no_file(tmp_path, weights):
    make_photos(tmp_path / "photos", n=2)
    p = run_cli("--export", tmp_path / "small.pt", "--weights", weights, preexec_fn=_limit_file_size(1000))
    one_line_error(p, f"cannot write the model {tmp_path / 'small.pt'}: ")
    p = run_cli("--eval", tmp_path / "photos", "--weights", weights, "--out", tmp_path / "eval",
                preexec_fn=_limit_file_size(100))
    one_line_error(p, f"cannot write the report {tmp_path / 'eval'}")
    assert not [f for f in os.listdir(tmp_path / "eval") if ".tmp" in f]
    assert not (tmp_path / "small.pt").exists()


def test_atomic_write_says_the_disk_is_full_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def fill_the_disk(f):
        f.write(b"new, partly")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(UserError, match=f"cannot write the file {path}: the disk is full"):
        atomic_write(str(path), fill_the_disk)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    with pytest.raises(UserError, match="read-only"):
        atomic_write(str(path), lambda f: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))


def test_eval_and_infer_on_file_names_that_are_not_utf8(tmp_path, weights):
    folder = tmp_path / "photos"
    make_photos(folder, n=2)
    os.rename(folder / "p0.png", os.path.join(os.fsencode(folder), b"caf\xe9.png"))
    p = run_cli("--eval", folder, "--weights", weights, "--out", tmp_path / "eval")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "caf\ufffd.png" in (tmp_path / "eval" / "metrics.csv").read_text(encoding="utf-8")
    p = run_cli("--infer", folder, "--weights", weights, "--out", tmp_path / "out")
    assert p.returncode == 0 and os.path.exists(os.path.join(os.fsencode(tmp_path / "out"), b"caf\xe9.png"))


# -----------------------------------------------------------------------------
# Nothing half-written

def test_longest_legal_file_name_is_written_even_beside_its_input(tmp_path, weights):
    name = "n" * 251 + ".png"  # 255 bytes: the limit of most file systems
    Image.fromarray(photo(32, 32, 1)).save(tmp_path / name)
    assert run_cli("--infer", tmp_path / name, "--weights", weights, "--out", tmp_path / "out").returncode == 0
    assert (tmp_path / "out" / name).exists()
    p = run_cli("--infer", tmp_path / name, "--weights", weights, "--out", tmp_path)  # must not replace the input
    assert p.returncode == 0, p.stderr
    assert [f for f in os.listdir(tmp_path) if f.endswith("_1.png") and len(f.encode()) <= 255]


def test_sigterm_during_infer_leaves_no_partial_files(tmp_path, weights):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(40):
        Image.fromarray(photo(400, 300, i)).save(folder / f"p{i:02d}.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "colorize_base.py"), "--infer", str(folder),
                             "--weights", weights, "--out", str(out), "--render-size", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out.exists() and len(os.listdir(out)) >= 3):
        assert proc.poll() is None and time.time() - t0 < 60
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    written = os.listdir(out)
    assert written and len(written) < 40 and all(f.endswith(".png") and not f.startswith(".") for f in written)
    for f in written:
        Image.open(out / f).load()  # each output is whole


def test_checkpoint_with_a_wrong_step_type_cannot_be_resumed(tmp_path):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    assert run_cli(*train_args(data, run_dir, 1)).returncode == 0
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**ckpt, "epoch": "3"}, run_dir / "checkpoint.pt")
    one_line_error(run_cli(*train_args(data, run_dir, 2)), "cannot resume from it", "epoch")
    assert load_checkpoint(str(run_dir / "checkpoint.pt"))["step"] == 1
