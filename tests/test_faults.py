"""Training survives faults: kill -9 at any moment (a save included), non-finite losses, bad data files."""
import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import colorize_base as cb
import losses
import runtime
import training
from checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from conftest import make_bad_inputs, make_good_inputs, make_photos, run_cli, saved_step, tiny_cfg, train_args

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs colorize_base.main() with checkpoint files written half, a pause, then the rest: a kill in
# the pause lands in the middle of a checkpoint save. Test-only, so the real save has no hook.
SLOW_SAVE = """\
import io, os, sys, time
sys.path.insert(0, {repo!r})
import checkpoint
import colorize_base
real_atomic_write = checkpoint.atomic_write
def slow_atomic_write(path, write, what="file"):
    def slow_write(f):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep({seconds})
        f.write(data[len(data) // 2:])
    real_atomic_write(path, slow_write, what)
checkpoint.atomic_write = slow_atomic_write
sys.exit(colorize_base.main())
"""


def start(script, args, log_path, **popen_args):
    """A training subprocess with stdout and stderr going to log_path (a file: no pipe to fill up)."""
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, script, *args], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen_args)


def wait_for(proc, condition, what, timeout=90):
    t0 = time.time()
    while not condition():
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before {what}"
        assert time.time() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.02)


def kill9(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def temporaries(run_dir):
    return [f for f in os.listdir(run_dir) if ".tmp" in f]


def logged_steps(run_dir):
    path = os.path.join(run_dir, "log.csv")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f) - 1


def resume_and_finish(tmp_path, data, run_dir, steps):
    """Run the real command line again; check it resumed from the checkpoint on disk and finished."""
    before = saved_step(run_dir) if os.path.exists(os.path.join(run_dir, "checkpoint.pt")) else None
    p = run_cli(*train_args(data, run_dir, steps))
    assert p.returncode == 0, p.stdout + p.stderr
    if before is not None:
        assert f"resumed from {os.path.join(run_dir, 'checkpoint.pt')} at step {before} " in p.stdout, p.stdout
    assert f"done: step {steps}," in p.stdout
    assert saved_step(run_dir) == steps
    assert not temporaries(run_dir)
    with open(os.path.join(run_dir, "log.csv")) as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, steps + 1))
    return p.stdout


def test_kill9_during_a_save_keeps_the_previous_checkpoint(tmp_path):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    script = tmp_path / "slow_save.py"
    script.write_text(SLOW_SAVE.format(repo=REPO, seconds=3))
    proc = start(str(script), train_args(data, run_dir, 50, "--save-every", "2"), tmp_path / "out.txt")
    ckpt = run_dir / "checkpoint.pt"
    # the first save completes; kill while the second one is half written
    wait_for(proc, lambda: ckpt.exists() and temporaries(run_dir), "a second save")
    time.sleep(0.3)
    kill9(proc)
    (tmp,) = temporaries(run_dir)
    with pytest.raises(cb.UserError, match="not a readable checkpoint"):
        load_checkpoint(str(run_dir / tmp))  # the half-written temporary file
    assert saved_step(run_dir) == 2  # the previous complete checkpoint is intact
    out = resume_and_finish(tmp_path, data, run_dir, 6)
    assert f"removed {run_dir / tmp}" in out  # the leftover did not confuse the resume


def test_kill9_at_several_points_then_resume_finishes(tmp_path):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    script = os.path.join(REPO, "colorize_base.py")
    args = train_args(data, run_dir, 1000, "--save-every", "3")
    # 1: while starting up, before any checkpoint
    proc = start(script, args, tmp_path / "out1.txt")
    wait_for(proc, lambda: "training on" in (tmp_path / "out1.txt").read_text(), "the start of training")
    kill9(proc)
    # 2 and 3: mid-training, at a step that is not a save
    step_before = None
    for k, stop_at in ((2, 4), (3, 8)):
        proc = start(script, args, tmp_path / f"out{k}.txt")
        wait_for(proc, lambda n=stop_at: logged_steps(run_dir) >= n, f"step {stop_at}")
        kill9(proc)
        step = saved_step(run_dir)
        assert step % 3 == 0 and step >= stop_at - 3
        if k == 3:
            assert f"at step {step_before} " in (tmp_path / "out3.txt").read_text()
        step_before = step
    resume_and_finish(tmp_path, data, run_dir, step_before + 4)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    data = make_photos(tmp_path / "data", n=6)  # none held out, 3 steps per epoch: the 4 steps cross an epoch
    parse = cb.build_parser().parse_args

    def run(run_dir, steps):
        cfg = cb.make_config(parse(train_args(data, tmp_path / run_dir, steps, "--save-every", "2",
                                              "--sample-every", "2")))
        return cb.train(cfg)

    assert run("whole", 4) == 4
    assert run("halves", 2) == 2
    assert run("halves", 4) == 4
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "halves" / "checkpoint.pt", weights_only=True)
    assert (a["step"], a["epoch"], a["batch_in_epoch"]) == (b["step"], b["epoch"], b["batch_in_epoch"]) == (4, 1, 1)
    for name in ("netG", "netD", "netG_ema"):
        for k in a[name]:
            assert torch.equal(a[name][k], b[name][k]), (name, k)
    for name in ("optG", "optD"):
        assert a[name]["state"][0]["step"] == b[name]["state"][0]["step"] == 4  # Adam state was restored
        for i, s in a[name]["state"].items():
            assert torch.equal(s["exp_avg_sq"], b[name]["state"][i]["exp_avg_sq"]), (name, i)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


# -----------------------------------------------------------------------------
# Non-finite losses

def nan_every(n):
    """An l1_loss that is NaN on every n-th call (n = 1: always)."""
    calls = []

    def l1(fake_B, real_B, *rest):
        calls.append(1)
        loss = losses.l1_loss(fake_B, real_B, *rest)
        return loss * float("nan") if len(calls) % n == 0 else loss
    return l1, calls


def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch, capsys):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    l1, calls = nan_every(3)
    monkeypatch.setattr(training, "l1_loss", l1)
    assert cb.train(tiny_cfg(data, run_dir, 6, "--max-bad-steps", "2")) == 6
    assert len(calls) == 8  # 6 good steps and 2 skipped: calls 3 and 6
    with open(run_dir / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert [int(r["bad_steps"]) for r in rows] == [0, 0, 1, 1, 2, 2]
    assert capsys.readouterr().out.count("warning: non-finite loss or gradient") == 2
    assert load_checkpoint(str(run_dir / "checkpoint.pt"))["bad_steps"] == 2


def test_too_many_nonfinite_steps_in_a_row_stop_with_checkpoint_intact(tmp_path, monkeypatch):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    assert cb.train(tiny_cfg(data, run_dir, 2)) == 2
    ckpt = run_dir / "checkpoint.pt"
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    monkeypatch.setattr(training, "l1_loss", nan_every(1)[0])
    with pytest.raises(cb.UserError, match=r"3 steps in a row had a non-finite loss or gradient; stopping\. "
                                           rf"The last good checkpoint is {ckpt}"):
        cb.train(tiny_cfg(data, run_dir, 10, "--max-bad-steps", "3", "--save-every", "1"))
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == digest
    assert saved_step(run_dir) == 2


# -----------------------------------------------------------------------------
# Bad training data

def test_training_on_good_and_bad_files_completes(tmp_path, capsys):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    make_good_inputs(str(data))
    bad = make_bad_inputs(str(data))
    assert cb.train(tiny_cfg(data, run_dir, 3)) == 3
    out = capsys.readouterr().out
    for rel in bad:
        assert out.count(f"warning: skipping {data / rel}: ") == 1, rel
    assert f"2 grayscale left out, {len(bad)} unreadable skipped" in out


def test_missing_data_folder_is_a_plain_error(tmp_path):
    p = run_cli(*train_args(tmp_path / "nope", tmp_path / "run", 2))
    assert p.returncode == 2
    assert f"no such file, folder or pattern: {tmp_path / 'nope'}" in p.stderr and "Traceback" not in p.stderr


def test_unusable_checkpoint_in_run_dir_is_named(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(cb.UserError, match=f"{run_dir / 'checkpoint.pt'}: not a readable checkpoint"):
        cb.train(tiny_cfg(make_photos(tmp_path / "data"), run_dir, 2))


def test_second_run_in_the_same_run_dir_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    with runtime.lock_run_dir(str(run_dir)):  # as if another training run were using it
        with pytest.raises(cb.UserError, match=f"{run_dir} is in use by another training run"):
            cb.train(tiny_cfg(make_photos(tmp_path / "data"), run_dir, 2))
    assert cb.train(tiny_cfg(tmp_path / "data", run_dir, 2)) == 2


def test_validation_folder_without_usable_images_is_a_plain_error(tmp_path):
    make_bad_inputs(str(tmp_path / "val"))
    with pytest.raises(cb.UserError, match=f"--val-dir {tmp_path / 'val'}: no usable colour images"):
        cb.train(tiny_cfg(make_photos(tmp_path / "data"), tmp_path / "run", 2, "--val-dir", str(tmp_path / "val")))


def test_exported_model_in_run_dir_is_not_resumed_from(tmp_path):
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    cfg = tiny_cfg(data, run_dir, 2)
    run_dir.mkdir()
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "netG_ema": {}}, str(run_dir / "checkpoint.pt"))
    with pytest.raises(cb.UserError, match=r"cannot resume from it \(not a full training checkpoint: KeyError"):
        cb.train(cfg)


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM to the process group"])
def test_interrupt_saves_a_checkpoint_and_exits(tmp_path, how):
    """Ctrl-C, or a scheduler's SIGTERM to every process (data workers included), finishes the step,
    saves it and exits 130; the next run resumes exactly there."""
    data, run_dir = make_photos(tmp_path / "data"), tmp_path / "run"
    args = train_args(data, run_dir, 1000, "--save-every", "1000", "--num-workers", "1")
    log_path = tmp_path / "out.txt"
    proc = start(os.path.join(REPO, "colorize_base.py"), args, log_path, start_new_session=True)
    wait_for(proc, lambda: logged_steps(run_dir) >= 2, "step 2")
    if how == "SIGINT":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 130, log_path.read_text()
    out = log_path.read_text()
    step = saved_step(run_dir)
    assert step >= 2 and f"interrupted: saved {run_dir / 'checkpoint.pt'} at step {step};" in out
    assert "Traceback" not in out
    resume_and_finish(tmp_path, data, run_dir, step + 2)
