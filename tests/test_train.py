"""Training, checkpoints and the command line, end to end on tiny generated images."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

import backends
import colorize_base as cb
import runtime
from backends import TorchNetwork
from checkpoint import FORMAT_VERSION, load_checkpoint, load_generator, save_checkpoint
from colorizer import Colorizer
from conftest import REPO, make_photos, run_cli, tiny_cfg, train_args
from models import build_generator


def photos_and_cfg(tmp_path, steps):
    """6 photos of 48x40 (too few to hold any out: 3 steps per epoch at batch 2) and a tiny config."""
    data = make_photos(tmp_path / "data", n=6, size=(48, 40))
    return tiny_cfg(data, tmp_path / "run", steps)


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_a_run_from_before_hint_decoder_resumes_where_the_constant_changes_nothing(tmp_path, capsys):
    cfg = photos_and_cfg(tmp_path, 2)
    cfg = {**cfg, "HINT_INPUT": True}  # the seed's U-Net: hints enter at its first layer only
    cb.train(cfg)
    path = os.path.join(cfg["RUN_DIR"], "checkpoint.pt")
    ckpt = load_checkpoint(path)
    del ckpt["cfg"]["HINT_DECODER"]  # as a checkpoint written before the constant existed
    save_checkpoint(ckpt, path)
    assert cb.train({**cfg, "MAX_STEPS": 3}) == 3
    assert "resumed from" in capsys.readouterr().out


def test_train_writes_checkpoint_samples_and_log(tmp_path):
    cfg = photos_and_cfg(tmp_path, 4)
    assert cb.train(cfg) == 4
    run = cfg["RUN_DIR"]
    ckpt = load_checkpoint(os.path.join(run, "checkpoint.pt"))
    assert ckpt["step"] == 4 and ckpt["cfg"]["NGF"] == 8
    assert {"netG", "netD", "netG_ema", "optG", "optD", "scaler", "rng"} <= set(ckpt)
    assert os.path.exists(os.path.join(run, "samples", "step_0000004.png"))
    rows = read_log(run)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["loss_G_L1"])) for r in rows)


def test_resume_continues_step_count(tmp_path, capsys):
    cfg = photos_and_cfg(tmp_path, 3)
    cb.train(cfg)
    ckpt3 = load_checkpoint(os.path.join(cfg["RUN_DIR"], "checkpoint.pt"))
    capsys.readouterr()
    assert cb.train({**cfg, "MAX_STEPS": 6}) == 6
    assert "resumed from" in capsys.readouterr().out
    ckpt6 = load_checkpoint(os.path.join(cfg["RUN_DIR"], "checkpoint.pt"))
    assert ckpt6["step"] == 6
    assert ckpt6["optG"]["state"][0]["step"].item() == 6  # Adam state carried over, not restarted
    # 6 images, none held out for samples: 6 / batch 2 = 3 steps per epoch
    assert (ckpt3["epoch"], ckpt3["batch_in_epoch"]) == (1, 0) and (ckpt6["epoch"], ckpt6["batch_in_epoch"]) == (2, 0)
    assert [int(r["step"]) for r in read_log(cfg["RUN_DIR"])] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_network(tmp_path):
    cfg = photos_and_cfg(tmp_path, 1)
    cb.train(cfg)
    with pytest.raises(cb.UserError, match="NGF=8 .now 16"):
        cb.train({**cfg, "NGF": 16, "MAX_STEPS": 2})


def test_checkpoint_reload_is_bit_identical(tmp_path):
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    torch.manual_seed(0)
    netG = build_generator(cfg).eval()
    with torch.no_grad():
        next(iter(netG.attn.values())).gamma.fill_(0.3)  # make attention matter
        x = torch.rand(1, 1, 64, 48) * 2 - 1
        expected = netG(x)
    path = str(tmp_path / "g.pt")
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "netG_ema": netG.state_dict()}, path)
    loaded, loaded_cfg = load_generator(path, torch.device("cpu"))
    assert loaded_cfg["NGF"] == 8
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)


def test_command_line_rejects_unknown_and_ill_typed(capsys):
    with pytest.raises(SystemExit):
        cb.main(["--train", "--no-such-constant", "3"])
    assert "--no-such-constant" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cb.main(["--train", "--epochs", "many"])
    assert "--epochs" in capsys.readouterr().err
    assert cb.main(["--train", "--size", "100"]) == 2
    assert "--image-size must be a positive multiple of 2**N_DOWNS = 64, got 100" in capsys.readouterr().err


def test_end_to_end_train_then_infer_cli(tmp_path):
    data = make_photos(tmp_path / "data", n=8, size=(48, 40))
    run = tmp_path / "run"
    r = run_cli(*train_args(data, run, 3))
    assert r.returncode == 0, r.stderr
    assert (run / "checkpoint.pt").exists() and (run / "log.csv").exists()

    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.open(tmp_path / "data" / "p0.png").save(inputs / "plain.png")
    rgba = Image.open(tmp_path / "data" / "p1.png").convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 77))
    rgba.save(inputs / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when shown
    Image.new("RGB", (50, 30), (200, 120, 40)).save(inputs / "rotated.jpg", exif=exif.tobytes())
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")

    out = tmp_path / "out"
    r = run_cli("--infer", str(inputs), "--weights", str(run / "checkpoint.pt"), "--out", str(out),
             "--render-size", "64", "--device", "cpu")
    assert r.returncode == 1  # one file failed
    assert "corrupt.jpg" in r.stderr and "Traceback" not in r.stderr
    assert "colorized 3 of 4" in r.stdout
    assert Image.open(out / "plain.png").size == (48, 40)
    alpha = Image.open(out / "alpha.png")
    assert alpha.mode == "RGBA" and alpha.getpixel((0, 0))[3] == 77
    assert Image.open(out / "rotated.png").size == (30, 50)  # EXIF orientation applied

    # inference is deterministic: the same input gives the same bytes
    r2 = run_cli("--infer", str(inputs / "plain.png"), "--weights", str(run / "checkpoint.pt"), "--out",
              str(tmp_path / "out2"), "--render-size", "64", "--device", "cpu")
    assert r2.returncode == 0
    assert np.array_equal(np.asarray(Image.open(out / "plain.png")),
                          np.asarray(Image.open(tmp_path / "out2" / "plain.png")))


def test_export_keeps_only_the_ema_generator_in_float16(tmp_path):
    cfg = photos_and_cfg(tmp_path, 2)
    cb.train(cfg)
    ckpt_path = os.path.join(cfg["RUN_DIR"], "checkpoint.pt")
    out = tmp_path / "weights" / "small.pt"
    assert cb.main(["--export", str(out), "--weights", ckpt_path]) == 0
    small = load_checkpoint(str(out))
    assert set(small) == {"format_version", "cfg", "step", "netG_ema"} and small["step"] == 2
    assert all(v.dtype == torch.float16 for v in small["netG_ema"].values() if v.is_floating_point())
    assert os.path.getsize(out) < os.path.getsize(ckpt_path) / 4
    rgb = np.asarray(Image.open(tmp_path / "data" / "p0.png"), dtype=np.float32) / 255
    full, _ = load_generator(ckpt_path, torch.device("cpu"))
    half, _ = load_generator(str(out), torch.device("cpu"))
    a = np.asarray(Colorizer(TorchNetwork(full, cfg, torch.device("cpu")), 64).colorize(rgb), dtype=np.float32) / 255
    b = np.asarray(Colorizer(TorchNetwork(half, cfg, torch.device("cpu")), 64).colorize(rgb), dtype=np.float32) / 255
    assert np.abs(a - b).max() < 2.5 / 255  # float16 storage changes the colours by less than two 8-bit steps
    noted, again = tmp_path / "weights" / "noted.pt", tmp_path / "weights" / "again.pt"
    assert cb.main(["--export", str(noted), "--weights", ckpt_path, "--about", "trained on p0..p3"]) == 0
    assert cb.main(["--export", str(again), "--weights", str(noted)]) == 0  # re-exporting keeps the note
    assert load_checkpoint(str(again))["about"] == "trained on p0..p3"


def test_export_and_inference_take_the_ema_generator_not_the_trained_one(tmp_path):
    """A checkpoint whose trained G is far from its EMA: --export writes the EMA (within float16), and
    --weights checkpoint.pt (load_generator) runs the EMA, bit for bit."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    torch.manual_seed(0)
    state = cb.build_state(cfg, torch.device("cpu"))
    with torch.no_grad():
        for p in state.netG.parameters():
            p.add_(1.0)  # G: off by 1 in every weight, the EMA untouched
    ckpt = str(tmp_path / "checkpoint.pt")
    state.save(ckpt, cfg, rng={})
    out = tmp_path / "small.pt"
    assert cb.main(["--export", str(out), "--weights", ckpt]) == 0
    exported = load_checkpoint(str(out))["netG_ema"]
    ema, trained = state.netG_ema.state_dict(), state.netG.state_dict()
    for k, v in ema.items():
        assert torch.allclose(exported[k].float(), v.float(), rtol=1e-3, atol=1e-4), k  # float16 storage
    assert all((trained[k] - exported[k].float()).abs().min() > 0.5 for k, _ in state.netG.named_parameters())
    loaded, _ = load_generator(ckpt, torch.device("cpu"))
    assert all(torch.equal(v, ema[k]) for k, v in loaded.state_dict().items())


def test_paths_on_the_command_line_are_relative_to_the_current_folder_and_constants_to_the_script(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = os.getcwd()
    parse = cb.build_parser().parse_args
    typed = cb.make_config(parse(["--infer", "x.jpg", "--weights", "w.pt", "--out", "o", "--data", "a,sub/b",
                                  "--run-dir", "../r", "--vgg-weights", "/abs/v.pth"]))
    assert typed["WEIGHTS"] == os.path.join(here, "w.pt") and typed["OUT_DIR"] == os.path.join(here, "o")
    assert typed["DATA_DIR"] == f"{os.path.join(here, 'a')},{os.path.join(here, 'sub', 'b')}"
    assert typed["RUN_DIR"] == os.path.join(os.path.dirname(here), "r")
    assert typed["VGG_WEIGHTS"] == "/abs/v.pth"
    defaults = cb.make_config(parse(["--infer", "x.jpg"]))  # the constants block: beside colorize_base.py
    shared = os.path.normpath(os.path.join(REPO, "..", "shared", "datasets", "bsds500"))
    assert defaults["WEIGHTS"] == os.path.join(REPO, "weights", "colorizer.pt")
    assert defaults["RUN_DIR"] == os.path.join(REPO, "runs", "default")
    assert defaults["DATA_DIR"] == f"{os.path.join(shared, 'train')},{os.path.join(shared, 'val')}"
    assert defaults["VAL_DIR"] == ""  # held out from DATA_DIR: no folder that only this machine has
    assert defaults["VGG_WEIGHTS"] == ""  # empty stays empty: no path at all


def test_cpu_bf16_only_where_native_and_checkpoints_stay_float32(monkeypatch, tmp_path):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.amp_dtype(cpu, {"AMP": "bf16"}) == torch.float32  # emulated bf16 is slower than float32
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.amp_dtype(cpu, {"AMP": "bf16"}) == torch.bfloat16
    assert runtime.amp_dtype(cpu, {"AMP": "off"}) == runtime.amp_dtype(cpu, {"AMP": "fp16"}) == torch.float32
    cfg = photos_and_cfg(tmp_path, 1)
    cb.train(cfg)
    ckpt = load_checkpoint(os.path.join(cfg["RUN_DIR"], "checkpoint.pt"))
    assert all(v.dtype == torch.float32 for k in ("netG", "netD", "netG_ema") for v in ckpt[k].values()
               if v.is_floating_point())


def test_threads_default_to_the_free_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert backends.set_threads({"THREADS": 1}) == 1 == torch.get_num_threads()
        monkeypatch.setattr(os, "getloadavg", lambda: (float(os.cpu_count()), 0.0, 0.0))  # every core busy
        assert backends.set_threads({"THREADS": 0}) == 1
    finally:
        torch.set_num_threads(before)


def test_training_with_balanced_sources_and_mosaics_runs_and_reports_the_shares(tmp_path, capsys):
    make_photos(tmp_path / "data" / "faces", n=6, size=(48, 40))
    make_photos(tmp_path / "data" / "scenes", n=3, size=(48, 40))
    assert cb.train(tiny_cfg(tmp_path / "data", tmp_path / "run", 3, "--source-balance", "1", "--mosaic", "0.5", "--exposure", "1")) == 3
    out = capsys.readouterr().out
    assert "share of draws at SOURCE_BALANCE 1.0" in out and "faces" in out and "scenes" in out
