"""The multi-process (torchrun) training path, on CPU with the gloo backend."""
import os
import subprocess
import sys
from pathlib import Path

import data
import runtime
from checkpoint import load_checkpoint
from conftest import TINY_ARGS, make_photos, saved_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_epoch_sampler_shards_each_batch_without_overlap():
    n, batch = 23, 3
    single = iter(runtime.EpochSampler(n, batch * 2, seed=5, epoch=1, batch=1))
    shards = [iter(runtime.EpochSampler(n, batch, seed=5, epoch=1, batch=1, rank=r, world=2)) for r in range(2)]
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


def test_weighted_epochs_draw_in_proportion_and_resume_mid_epoch():
    weights = [1.0] * 6 + [3.0] * 2  # the last two indices: three times as likely each
    full = iter(runtime.EpochSampler(8, 2, seed=1, weights=weights))
    draws = [next(full) for _ in range(8 * 500)]
    share = sum(d >= 6 for d in draws) / len(draws)
    assert abs(share - 6 / 12) < 0.03  # 2 x 3 of the 12 weight units
    resumed = iter(runtime.EpochSampler(8, 2, seed=1, epoch=1, batch=1, weights=weights))
    assert [next(resumed) for _ in range(10)] == draws[8 + 2: 8 + 12]  # epoch 1, from its second batch
    shards = [iter(runtime.EpochSampler(8, 2, seed=1, rank=r, world=2, weights=weights)) for r in range(2)]
    whole = iter(runtime.EpochSampler(8, 4, seed=1, weights=weights))
    for _ in range(4):  # each global batch of 4 is the two shards' batches of 2, interleaved
        batch = [next(whole) for _ in range(4)]
        assert sorted([next(shards[0]) for _ in range(2)] + [next(shards[1]) for _ in range(2)]) == sorted(batch)


def test_source_balance_weights_each_first_level_folder(tmp_path):
    a, b = make_photos(tmp_path / "photos" / "a", n=6), make_photos(tmp_path / "photos" / "b", n=2)
    loose = make_photos(tmp_path / "loose", n=4)
    files = sorted(str(p) for d in (a, b, loose) for p in Path(d).glob("*.png"))
    roots = [str(tmp_path / "photos"), loose]
    lines = []
    weights = dict(zip(files, data.source_weights(files, roots, 1.0, lines.append)))
    assert {round(w, 6) for f, w in weights.items() if "/a/" in f} == {round(1 / 6, 6)}
    assert {round(w, 6) for f, w in weights.items() if "/b/" in f} == {0.5}
    assert {w for f, w in weights.items() if "loose" in f} == {0.25}  # files straight in an entry: one source
    assert "a 6 (33.3%)" in lines[0] and "b 2 (33.3%)" in lines[0] and "loose 4 (33.3%)" in lines[0]
    assert set(data.source_weights(files, roots, 0.0, lines.append)) == {1.0}
