"""The numerical core every photo and every training step goes through, against hand computations:
the render-size path of Colorizer.colorize, the luminance of the output, the generator EMA, skipped
non-finite steps, and the agreement of two training processes."""
import copy
import math
import os
import time
import warnings
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from PIL import Image
from skimage import color
from torch.nn.parallel import DistributedDataParallel as DDP

import colorize_base as cb
import losses
import runtime
import training
from backends import TorchNetwork
from colorizer import Colorizer
from conftest import make_photos, tiny_cfg
from images import lab_to_net, lab_to_rgb, rgb_to_lab
from models import UnetGenerator, build_generator

CPU = torch.device("cpu")


# -----------------------------------------------------------------------------
# Inference: a generator whose prediction is known

POISON = (1.0, 1.0)  # ab = (110, 110) in network scale: far out of gamut, unmistakable wherever it shows


class KnownColours(UnetGenerator):
    """Stands in for the trained generator: the real pad() and multiple (8), and a forward that keeps
    its input in .seen and predicts ab = colour(y, x) on the h x w picture, and POISON on the padding."""

    def __init__(self, h, w, colour):
        super().__init__(ngf=1, n_downs=3, attn_factors=(), use_sn=False)
        self.h, self.w, self.colour, self.seen = h, w, colour, None

    def forward(self, x):
        assert x.shape[-2] % self.multiple == 0 and x.shape[-1] % self.multiple == 0, x.shape
        self.seen = x.clone()
        y, x = torch.meshgrid(torch.arange(x.shape[-2]), torch.arange(x.shape[-1]), indexing="ij")
        ab = torch.stack(self.colour(y.float(), x.float()))
        padding = (y >= self.h) | (x >= self.w)
        return torch.where(padding, torch.tensor(POISON).view(2, 1, 1), ab)[None]  # (1, 2, H, W)


def lab_of(image):
    """Lab (3, H, W) of a PIL image or an (H, W, 3) uint8 array."""
    rgb = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    return rgb_to_lab(rgb)[0]


def assert_in_gamut(lab):
    """A guard on the test itself: these Lab colours survive the trip to RGB and back unclipped."""
    assert (rgb_to_lab(lab_to_rgb(lab[None]))[0] - lab).abs().max() < 0.05


def gray_photo(w, h):
    """An 8-bit gray photo with a ramp and a pixel-level checkerboard: L from about 49 to 70."""
    y, x = np.mgrid[0:h, 0:w]
    gray = 115 + 40 * x / w + 15 * ((x + y) % 2)
    return np.repeat(np.round(gray).astype(np.uint8)[..., None], 3, axis=2)


def test_a_photo_many_times_the_render_size_gets_the_prediction_upsampled_without_shift_or_padding():
    """203 x 141 at render size 20: the network sees the area-averaged L at 20 x 14 (longer side 20),
    padded to 24 x 16 by repeating the edge. Its prediction, cropped back to 20 x 14, is upsampled
    bilinearly to 203 x 141 (half-pixel centres, as F.interpolate with align_corners=False): a linear
    ramp stays the same ramp in the interior and holds its edge value beyond the outermost centres.
    No shift, no mirrored border, and nothing of the padding shows."""
    W, H, w, h = 203, 141, 20, 14

    def ramp(y, x):  # a from -15 to 40 (2.9 per small pixel), b from -15 to 35 (3.8): in gamut at these L
        return (-15 + 55 * x / (w - 1)) / 110, (-15 + 50 * y / (h - 1)) / 110

    netG = KnownColours(h, w, ramp)
    rgb = gray_photo(W, H)
    out = Colorizer(TorchNetwork(netG, {}, CPU), render_size=20).colorize(rgb)
    assert out.size == (W, H) and out.mode == "RGB"

    # what the network saw: the photo's L, area-averaged to h x w, edge repeated to the multiple of 8
    L = lab_to_net(lab_of(rgb)[None])[0]
    assert netG.seen.shape == (1, 1, 16, 24)
    assert torch.allclose(netG.seen[..., :h, :w], F.adaptive_avg_pool2d(L, (h, w)), atol=1e-5)
    assert torch.equal(netG.seen[..., h:, :], netG.seen[..., h - 1:h, :].expand(-1, -1, 16 - h, -1))
    assert torch.equal(netG.seen[..., w:], netG.seen[..., w - 1:w].expand(-1, -1, -1, 24 - w))

    # what the colour must be at full size: the ramp at the source coordinate of each pixel centre
    sx = ((torch.arange(W) + 0.5) * w / W - 0.5).clamp(0, w - 1)
    sy = ((torch.arange(H) + 0.5) * h / H - 0.5).clamp(0, h - 1)
    a, b = ramp(sy[:, None].expand(H, W), sx[None, :].expand(H, W))
    expected_ab = torch.stack([a, b]) * 110
    lab = lab_of(out)
    assert_in_gamut(torch.cat([lab[:1], expected_ab]))
    err_a, err_b = lab[1] - expected_ab[0], lab[2] - expected_ab[1]
    assert err_a.abs().max() < 1 and err_b.abs().max() < 1  # 8-bit output: 0.6 at most; the padding's colour: 100
    # a depends on the column only and b on the row only: averaged along the other direction, 8-bit
    # rounding leaves 0.04, while a shift of a tenth of a small pixel costs 0.3 (a) and 0.4 (b)
    assert err_a.mean(dim=0).abs().max() < 0.1 and err_b.mean(dim=1).abs().max() < 0.1


def test_output_luminance_is_the_photos_own_at_full_resolution():
    """The network sees a heavily averaged L, but the output's L is the photo's own, pixel by pixel
    (within the 8-bit round trip), wherever the predicted colour is inside the sRGB gamut."""
    rng = np.random.default_rng(0)
    gray = rng.integers(90, 170, (53, 75), dtype=np.uint8)  # detail at the scale of one pixel
    rgb = np.repeat(gray[..., None], 3, axis=2)

    def mild(y, x):
        return 0.25 + 0 * x, -0.2 + 0.01 * y  # a = 27.5, b from -22 to -11: in gamut for L 37..70

    out = Colorizer(TorchNetwork(KnownColours(11, 16, mild), {}, CPU), render_size=16).colorize(rgb)
    L_in, lab_out = lab_of(rgb)[0], lab_of(out)
    assert_in_gamut(lab_out)
    assert lab_out[1].mean() > 20 and lab_out[2].mean() < -10  # it is coloured
    assert (lab_out[0] - L_in).abs().max() < 0.6  # half an 8-bit step; the averaged L is off by 20 and more


def test_out_of_gamut_colours_are_clipped_per_rgb_channel_so_their_luminance_can_change():
    """What the README says: a predicted colour outside sRGB at the photo's L is converted as
    scikit-image's lab2rgb does, each RGB channel clipped to [0, 1]; L there is not the photo's."""
    rgb = gray_photo(40, 30)

    def saturated(y, x):  # ab = (99, -88): no sRGB colour has it at L 49..70
        return 0.9 + 0 * x, -0.8 + 0 * y

    out = np.asarray(Colorizer(TorchNetwork(KnownColours(30, 40, saturated), {}, CPU), render_size=40).colorize(rgb))
    L_in = lab_of(rgb)[0].numpy()
    exact = np.stack([L_in, np.full_like(L_in, 99.0), np.full_like(L_in, -88.0)], axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns that it clips
        expected = np.round(color.lab2rgb(exact.astype(np.float64)) * 255)
    assert np.abs(out.astype(float) - expected).max() <= 1
    assert np.abs(lab_of(out)[0].numpy() - L_in).mean() > 1  # the clipped colour has another luminance


def test_16_bit_gray_photos_are_read_at_their_own_scale():
    """Values 0..65535 mean black..white: with no colour predicted, the output is value / 257."""
    values = np.linspace(0, 65535, 48 * 32).reshape(32, 48).astype(np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    none = KnownColours(32, 48, lambda y, x: (0 * x, 0 * y))
    out = np.asarray(Colorizer(TorchNetwork(none, {}, CPU), render_size=48).colorize(img), dtype=float)
    assert np.abs(out - values[..., None] / 257).max() <= 1


# -----------------------------------------------------------------------------
# The generator EMA

def test_ema_decay_warms_up_as_one_plus_step_over_ten_plus_step():
    cfg = {"EMA_DECAY": 0.999, "INIT": ""}  # from scratch (a fine-tune averages at EMA_DECAY at once: test_losses)
    assert training.ema_decay(cfg, 0) == pytest.approx(1 / 10)
    assert training.ema_decay(cfg, 1) == pytest.approx(2 / 11)
    assert training.ema_decay(cfg, 10) == pytest.approx(11 / 20)
    assert training.ema_decay(cfg, 8000) == pytest.approx(8001 / 8010)   # still warming up: 0.99888
    assert training.ema_decay(cfg, 9000) == 0.999                         # 9001 / 9010 would be 0.99900111
    assert training.ema_decay({"EMA_DECAY": 0.5, "INIT": ""}, 7) == pytest.approx(8 / 17)
    assert training.ema_decay({"EMA_DECAY": 0.5, "INIT": ""}, 9) == 0.5


def test_update_ema_averages_parameters_and_copies_buffers_by_hand():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([0.0, 1.0]))
            self.register_buffer("running", torch.tensor([5.0]))

    netG = Toy()
    netG_ema = copy.deepcopy(netG)
    for w, running, decay in (([10.0, -10.0], 6.0, 2 / 11), ([20.0, 0.0], 7.0, 3 / 12), ([40.0, 4.0], 8.0, 4 / 13)):
        netG.w.data = torch.tensor(w)
        netG.running.fill_(running)
        training.update_ema(netG_ema, netG, decay)
    # by hand: ema = decay * ema + (1 - decay) * w, from ema = [0, 1]
    e1 = [2 / 11 * 0 + 9 / 11 * 10, 2 / 11 * 1 + 9 / 11 * -10]   # [8.1818, -8.0]
    e2 = [3 / 12 * e1[0] + 9 / 12 * 20, 3 / 12 * e1[1] + 9 / 12 * 0]  # [17.0455, -2.0]
    e3 = [4 / 13 * e2[0] + 9 / 13 * 40, 4 / 13 * e2[1] + 9 / 13 * 4]  # [32.9371, 2.1538]
    assert netG_ema.w.tolist() == pytest.approx(e3, rel=1e-6)
    assert netG_ema.running.item() == 8.0  # copied, not averaged


def test_update_ema_of_the_real_generator_covers_every_parameter_and_buffer(tmp_path):
    """Spectral-norm weights (parametrizations.*.original), batch-norm statistics and spectral-norm
    vectors included."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    torch.manual_seed(0)
    netG_ema = build_generator(cfg)
    netG = build_generator(cfg)  # other random weights
    netG.train()
    netG(torch.rand(2, 1, 32, 32) * 2 - 1)  # moves the batch-norm statistics and spectral-norm vectors
    before = {k: v.clone() for k, v in netG_ema.state_dict().items()}
    training.update_ema(netG_ema, netG, 0.75)
    params = dict(netG.named_parameters())
    for k, v in netG_ema.state_dict().items():
        if k in params:
            assert torch.allclose(v, 0.75 * before[k] + 0.25 * params[k], atol=1e-6), k
        else:
            assert torch.equal(v, netG.state_dict()[k]), k
    assert any(not torch.equal(before[k], netG.state_dict()[k]) for k in before if k not in params)


def test_training_applies_the_warm_up_once_per_counted_step(tmp_path, monkeypatch):
    """The EMA is updated after each counted step with the decay of the step just reached, and not
    at all after a skipped step."""
    data = make_photos(tmp_path / "data")
    decays, calls, update_ema = [], [], training.update_ema

    def spy(netG_ema, netG, decay):
        decays.append(decay)
        update_ema(netG_ema, netG, decay)

    def nan_on_second_call(fake_B, real_B, *rest):
        calls.append(1)
        return losses.l1_loss(fake_B, real_B, *rest) * (math.nan if len(calls) == 2 else 1)

    monkeypatch.setattr(training, "update_ema", spy)
    monkeypatch.setattr(training, "l1_loss", nan_on_second_call)
    assert cb.train(tiny_cfg(data, tmp_path / "run", 3)) == 3
    assert len(calls) == 4 and decays == pytest.approx([2 / 11, 3 / 12, 4 / 13])


# -----------------------------------------------------------------------------
# Skipped steps

def batch(seed):
    """(real_A, real_B) of two random 32 x 32 colour images, in network scaling."""
    g = torch.Generator().manual_seed(seed)
    return lab_to_net(rgb_to_lab(torch.rand(2, 3, 32, 32, generator=g)))


def loader_batch(seed):
    """Two random 32 x 32 colour images as the loader gives them: uint8 RGB (2, 3, 32, 32)."""
    return torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.fixture
def state_and_cfg(tmp_path):
    """A tiny TrainState after one good step and its EMA update, so the optimizers have state to lose."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    torch.manual_seed(0)
    state = cb.build_state(cfg, CPU)
    ok, _ = training.step(state, loader_batch(0), cfg)  # the step training runs: train_step, counters, EMA
    assert ok and state.step == 1
    return state, cfg


def snapshot(state):
    return {"netG": copy.deepcopy(state.netG.state_dict()), "netG_ema": copy.deepcopy(state.netG_ema.state_dict()),
            "netD params": {k: v.detach().clone() for k, v in state.netD.named_parameters()},
            "optG": copy.deepcopy(state.optG.state_dict()), "optD": copy.deepcopy(state.optD.state_dict())}


def same(a, b):
    """Equal nested dicts / lists of tensors and plain values, tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def assert_unchanged(before, after, parts):
    for part in parts:
        assert same(before[part], after[part]), f"{part} changed in a skipped step"


class InfiniteGradient(torch.autograd.Function):
    """The identity, whose backward pass gives inf: a finite loss with infinite gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.inf)


def discriminator_side(change):
    """A gan_loss whose discriminator losses are passed through change."""
    def gan_loss(pred, target_is_real, mode="hinge", for_discriminator=True):
        loss = losses.gan_loss(pred, target_is_real, mode, for_discriminator)
        return change(loss) if for_discriminator else loss
    return gan_loss


ALL = ("netG", "netG_ema", "netD params", "optG", "optD")


@pytest.mark.parametrize("how", ["infinite loss", "infinite gradients"])
def test_a_non_finite_discriminator_step_changes_nothing(state_and_cfg, monkeypatch, how):
    """G (batch-norm statistics included), D's weights, the EMA and both optimizers stay as they were.
    (D's spectral-norm vectors may take their power-iteration step: they only estimate the norm.)"""
    state, cfg = state_and_cfg
    change = (lambda loss: loss + math.inf) if how == "infinite loss" else InfiniteGradient.apply
    monkeypatch.setattr(training, "gan_loss", discriminator_side(change))
    before = snapshot(state)
    ok, losses_ = training.train_step(state, *batch(1), cfg)
    assert not ok
    assert_unchanged(before, snapshot(state), ALL)
    assert torch.isfinite(losses_).all() == (how == "infinite gradients")


def test_infinite_generator_gradients_skip_the_generator_step(state_and_cfg, monkeypatch):
    """G, the EMA and G's optimizer stay as they were. D's half of the step was finite and stands:
    each optimizer steps only when its own loss and gradients are finite (train_step's docstring)."""
    state, cfg = state_and_cfg
    monkeypatch.setattr(training, "l1_loss", lambda fake_B, real_B, *rest: InfiniteGradient.apply(losses.l1_loss(fake_B, real_B, *rest)))
    before = snapshot(state)
    ok, losses_ = training.train_step(state, *batch(1), cfg)
    assert not ok and torch.isfinite(losses_).all()
    after = snapshot(state)
    assert_unchanged(before, after, ("netG", "netG_ema", "optG"))
    assert not same(before["netD params"], after["netD params"]) and not same(before["optD"], after["optD"])


def test_a_non_finite_forward_pass_leaves_no_nan_in_the_batch_norm_statistics(state_and_cfg):
    """An Inf in G's activations (fp16 overflow; here an Inf in the input) makes the step non-finite.
    G's batch-norm statistics must not keep it: the EMA copies them after the next good step, and an
    EMA with NaN statistics paints every photo black."""
    state, cfg = state_and_cfg
    real_A, real_B = batch(1)
    real_A[0, 0, 5, 7] = math.inf
    before = snapshot(state)
    ok, _ = training.train_step(state, real_A, real_B, cfg)
    assert not ok
    assert_unchanged(before, snapshot(state), ALL)
    ok, _ = training.train_step(state, *batch(2), cfg)
    assert ok
    training.update_ema(state.netG_ema, state.netG, training.ema_decay(cfg, 2))
    bad = [k for k, v in state.netG_ema.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    assert not bad


# -----------------------------------------------------------------------------
# Two training processes (gloo on CPU)

BAD_STEPS = {1: (1, "D"), 2: (0, "G")}  # step: (the one rank whose loss is infinite there, which loss)


def _agreement_worker(rank, folder, cfg):
    """One of two processes: four train_steps on its own data through DistributedDataParallel, with an
    infinite loss on one rank only at steps 1 (D) and 2 (G); saves its results for the test to compare."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))
    try:
        torch.manual_seed(0)  # the same initial networks in both processes
        state = cb.build_state(cfg, CPU)
        initial = copy.deepcopy(state.netG.state_dict())
        nets = (DDP(state.netG), DDP(state.netD))
        oks = []
        for step in range(4):
            bad_rank, which = BAD_STEPS.get(step, (None, None))
            training.gan_loss, training.l1_loss = losses.gan_loss, losses.l1_loss
            if rank == bad_rank and which == "D":
                training.gan_loss = discriminator_side(lambda loss: loss + math.inf)
            if rank == bad_rank and which == "G":
                training.l1_loss = lambda fake_B, real_B, *rest: losses.l1_loss(fake_B, real_B, *rest) + math.inf
            ok, _ = training.step(state, loader_batch(100 * rank + step), cfg, nets=nets)
            oks.append(ok)
        stops = [runtime.any_rank(rank == 0, CPU), runtime.any_rank(rank == 1, CPU), runtime.any_rank(False, CPU)]
        torch.save({"oks": oks, "stops": stops, "initial": initial,
                    **{k: getattr(state, k).state_dict() for k in ("netG", "netD", "netG_ema", "optG", "optD")}},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_skip_and_stop_together_and_stay_identical(tmp_path):
    """A non-finite loss seen by one process only is skipped by both, a stop request made in one
    process is seen by both, and after four steps the two replicas hold the same weights, EMA weights
    and optimizer states, bit for bit."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    ctx = mp.start_processes(_agreement_worker, args=(str(tmp_path), cfg), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180  # a hang guard only: the processes wait on each other when they disagree
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail("the two processes did not finish: they disagree on a collective operation")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["oks"] == r1["oks"] == [True, False, False, True]
    assert r0["stops"] == r1["stops"] == [True, True, False]
    # batch-norm statistics stay each process's own until DDP broadcasts process 0's at the next forward
    own = ("running_mean", "running_var")
    for k in ("netG", "netD", "netG_ema"):
        shared = [n for n in r0[k] if not n.endswith(own)]
        assert same({n: r0[k][n] for n in shared}, {n: r1[k][n] for n in shared}), k
    assert same(r0["optG"], r1["optG"]) and same(r0["optD"], r1["optD"])
    assert not same(r0["initial"], r0["netG"])  # they did train
