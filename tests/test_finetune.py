"""--init: fine-tuning starts the generator and its EMA from a trained model, with new discriminators
and optimizers, on the network that model was trained with."""
import os

import torch

from checkpoint import load_checkpoint
from conftest import REPO, make_photos, run_cli, train_args


def generator_params(state):
    """The learned tensors of a generator state dict (buffers such as batch-norm statistics left out)."""
    return {k: v.float() for k, v in state.items() if "running_" not in k and "num_batches" not in k
            and not k.endswith(("._u", "._v"))}


def test_init_starts_g_and_ema_from_the_model_and_d_from_scratch(tmp_path):
    data = make_photos(tmp_path / "data")
    assert run_cli(*train_args(data, tmp_path / "a", 3)).returncode == 0
    source = load_checkpoint(str(tmp_path / "a" / "checkpoint.pt"))
    # --ngf 16 on the command line: the network of the --init model (NGF 8) is the one trained
    p = run_cli(*train_args(data, tmp_path / "b", 1, "--init", tmp_path / "a" / "checkpoint.pt", "--ngf", "16",
                            "--lr-g", "1e-12"))
    assert p.returncode == 0, p.stderr
    assert f"fine-tuning from {tmp_path / 'a' / 'checkpoint.pt'} (its step 3)" in p.stdout
    tuned = load_checkpoint(str(tmp_path / "b" / "checkpoint.pt"))
    assert tuned["cfg"]["NGF"] == 8 and tuned["step"] == 1
    start = generator_params(source["netG_ema"])
    for name in ("netG", "netG_ema"):  # a learning rate of 1e-12: one step leaves them where they started
        got = generator_params(tuned[name])
        assert got.keys() == start.keys()
        assert all(torch.allclose(got[k], start[k], atol=1e-6) for k in start), name
    assert all(s["step"] == 1 for s in tuned["optD"]["state"].values())  # new optimizer: one step taken
    # the run resumes with the same command, on INIT's network
    p = run_cli(*train_args(data, tmp_path / "b", 2, "--init", tmp_path / "a" / "checkpoint.pt", "--ngf", "16"))
    assert p.returncode == 0 and "resumed from" in p.stdout, p.stderr


def test_fine_tuning_the_shipped_model_on_20_photos_for_100_steps(tmp_path):
    """The README's fine-tuning recipe, shrunk to CPU-test size: the bundled model, 20 photos, 100 steps."""
    data = make_photos(tmp_path / "data", n=20, size=(72, 64))
    p = run_cli("--train", "--init", os.path.join(REPO, "weights", "colorizer.pt"), "--data", data,
                "--run-dir", tmp_path / "run", "--steps", 100, "--size", 64, "--batch-size", 2, "--num-workers", 0,
                "--val-dir", "", "--num-samples", 2, "--ndf", 8, "--num-d", 2, "--device", "cpu", timeout=600)
    assert p.returncode == 0, p.stderr
    tuned = load_checkpoint(str(tmp_path / "run" / "checkpoint.pt"))
    assert tuned["step"] == 100 and tuned["cfg"]["NGF"] == 32  # the shipped network, fine-tuned
    assert run_cli("--infer", data, "--weights", tmp_path / "run" / "checkpoint.pt", "--out", tmp_path / "out",
                   "--device", "cpu").returncode == 0
    assert len(os.listdir(tmp_path / "out")) == 20


def test_init_that_is_not_a_model_is_a_one_line_error(tmp_path):
    data = make_photos(tmp_path / "data")
    (tmp_path / "x.pt").write_text("no")
    p = run_cli(*train_args(data, tmp_path / "run", 1, "--init", tmp_path / "x.pt"))
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'x.pt'}: ")
