"""The multi-process (torchrun) training path, on CPU with the gloo backend."""
import os
import subprocess
import sys

import colorize_base as cb
from checkpoint import load_checkpoint
from conftest import TINY_ARGS, make_photos, saved_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epoch_sampler_shards_each_batch_without_overlap():
    n, batch = 23, 3
    single = iter(cb.EpochSampler(n, batch * 2, seed=5, epoch=1, batch=1))
    shards = [iter(cb.EpochSampler(n, batch, seed=5, epoch=1, batch=1, rank=r, world=2)) for r in range(2)]
    for _ in range(6):  # runs into the next epoch
        global_batch = [next(single) for _ in range(batch * 2)]
        parts = [[next(s) for _ in range(batch)] for s in shards]
        assert sorted(parts[0] + parts[1]) == sorted(global_batch)
        assert not set(parts[0]) & set(parts[1])


def _torchrun(*args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(REPO, "colorize_base.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)


def test_torchrun_two_processes_train_and_resume(tmp_path):
    data, run_dir = make_photos(tmp_path / "data", n=10), tmp_path / "run"
    args = ["--train", *TINY_ARGS, "--data", data, "--run-dir", str(run_dir), "--device", "cpu"]
    r = _torchrun(*args, "--steps", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training on 2 x cpu" in r.stdout and "batch 2 x 2" in r.stdout
    assert r.stdout.count("done: step 3") == 1  # only process 0 reports and writes
    assert saved_step(run_dir) == 3
    with open(run_dir / "log.csv") as f:
        assert len(f.read().splitlines()) == 1 + 3

    r = _torchrun(*args, "--steps", "5")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "at step 3 " in r.stdout and saved_step(run_dir) == 5
    # the checkpoint is a plain one: single-process inference and training read it
    assert load_checkpoint(str(run_dir / "checkpoint.pt"))["cfg"]["NGF"] == 8


def test_torchrun_two_nodes_meet_at_a_rendezvous_endpoint(tmp_path):
    """The multi-node form of the README: two torchrun launchers (one per "machine", here both on
    this one), each with one process, meeting at a c10d rendezvous endpoint on the first."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data, run_dir = make_photos(tmp_path / "data", n=10), tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "colorizer-test",
           os.path.join(REPO, "colorize_base.py"), "--train", *TINY_ARGS, "--data", data, "--run-dir", str(run_dir),
           "--device", "cpu", "--steps", "2"]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert sum("training on 2 x cpu" in out for out in outputs) == 1  # global rank 0 reports and writes
    assert saved_step(run_dir) == 2
