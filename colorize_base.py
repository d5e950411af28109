"""Colorize black-and-white photos with a conditional GAN in Lab space.

    python colorize_base.py --train [--data DIR] [--steps N] ...   train (resumes in RUN_DIR)
    python colorize_base.py --infer img.jpg folder/ "scans/*.tif"   colorize into OUT_DIR
    python colorize_base.py --eval photos/ [--eval-size 256]        quality metrics into EVAL_DIR

Every constant below can be overridden by name on the command line:
IMAGE_SIZE -> --image-size 128 (short forms: --size, --data, --steps).
"""
import argparse
import copy
import csv
import json
import os
import signal
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.transforms import v2
from torchvision.utils import save_image
from tqdm import tqdm

from data import (IMG_EXTENSIONS, BadImageError, ColorizationDataset, find_images, is_grayscale, lab_to_net,
                  lab_to_rgb, load_image, net_to_lab, resize_long_side, rgb_to_lab, scan_images, to_net_input)
from losses import VGGLoss, feature_matching_loss, gan_loss, l1_loss
from metrics import colorfulness, colorfulness_gap, image_metrics
from models import build_discriminator, build_generator

# -----------------------------------------------------------------------------
# Constants (relative paths are relative to this file; command-line paths to the current folder)
DATA_DIR = "../shared/datasets/bsds500/train,../shared/datasets/bsds500/val"  # comma-separated folders, files or globs of colour photos
VAL_DIR = "../shared/datasets/bsds500/test"  # held-out photos for the sample grids; "" holds out NUM_SAMPLES from DATA_DIR
RUN_DIR = "runs/default"            # checkpoint.pt, log.csv and samples/ of a training run
WEIGHTS = "weights/colorizer_bsds500.pt"  # generator used by --infer: an exported model or a run's checkpoint.pt
OUT_DIR = "results/colorized"       # where --infer writes <stem>.png
EVAL_DIR = "results/eval"           # where --eval writes metrics.csv, summary.json and sheet.png (--out overrides)
IMAGE_SIZE = 128                    # 128 or 256; training crop, pixels (a multiple of 2**N_DOWNS)
BATCH_SIZE = 16                     # images per step
EPOCHS = 200                        # passes over the training set
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
NGF = 32                            # generator width of the first layer, channels
N_DOWNS = 6                         # generator depth: 64x down, so inputs are padded to multiples of 64
ATTN_FACTORS = (8,)                 # self-attention after the decoder level at input/f, for each f (8: 32x32 of a 256 input)
SPECTRAL_NORM = True                # spectral norm on G and D convolutions (SAGAN)
DROPOUT = 0.0                       # dropout in the three innermost decoder blocks, 0..1 (pix2pix uses 0.5)
NDF = 32                            # discriminator width of the first layer, channels (pix2pix: 64; 32 halves the CPU step time)
N_LAYERS_D = 3                      # strided layers per PatchGAN (3: 70x70 patches)
NUM_D = 3                           # discriminators, one per image scale (pix2pixHD)
EMA_DECAY = 0.999                   # generator exponential moving average, per step
SAVE_EVERY = 500                    # checkpoint interval, generator steps
SAMPLE_EVERY = 500                  # sample grid interval, generator steps
LOG_EVERY = 25                      # CSV log interval, generator steps
NUM_SAMPLES = 8                     # held-out images in each sample grid
MAX_BAD_STEPS = 20                  # stop after this many consecutive steps with a non-finite loss or gradient
RENDER_SIZE = 256                   # inference: longer side, pixels, at which the network sees the photo
EVAL_SIZE = 0                       # --eval: shorter side resized to this, centre square cut, pixels; 0 = full image
MAX_PIXELS = 100_000_000            # refuse images with more pixels than this (decompression-bomb guard)
NUM_WORKERS = 2                     # data-loading processes; 0 loads in the main process
AMP = "bf16"                        # CUDA mixed precision: bf16, fp16 or off (CPU always runs float32)
SEED = 0                            # random seed
DEVICE = "auto"                     # auto (CUDA when available), cpu, cuda or cuda:N
# -----------------------------------------------------------------------------
CONSTANTS = {k: v for k, v in dict(globals()).items() if k.isupper() and isinstance(v, (bool, int, float, str, tuple))}
HERE = os.path.dirname(os.path.abspath(__file__))
ARCH_KEYS = ("NGF", "N_DOWNS", "ATTN_FACTORS", "SPECTRAL_NORM", "DROPOUT", "NDF", "N_LAYERS_D", "NUM_D")
PATH_KEYS = ("DATA_DIR", "VAL_DIR", "RUN_DIR", "WEIGHTS", "OUT_DIR", "VGG_WEIGHTS", "EVAL_DIR")
ALIASES = {"DATA_DIR": ["--data"], "IMAGE_SIZE": ["--size"], "MAX_STEPS": ["--steps"], "OUT_DIR": ["--out"]}
FORMAT_VERSION = 1


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, without a traceback."""


# -----------------------------------------------------------------------------
# Command line

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
    p.add_argument("--fresh", action="store_true", help="with --train: start over, ignoring a checkpoint in RUN_DIR")
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


def make_config(args):
    """Constants overridden by the command line, with paths made absolute."""
    cfg = dict(CONSTANTS)
    for name in CONSTANTS:
        value = getattr(args, name)
        if value is not None:
            cfg[name] = value
            if name in PATH_KEYS and value:  # typed by the user: relative to the current folder
                cfg[name] = ",".join(os.path.abspath(v) for v in value.split(",")) if name == "DATA_DIR" \
                    else os.path.abspath(value)
        elif name in PATH_KEYS and cfg[name]:
            cfg[name] = ",".join(os.path.normpath(os.path.join(HERE, v)) for v in cfg[name].split(","))
    check_config(cfg)
    return cfg


def check_config(cfg):
    m = 2 ** cfg["N_DOWNS"]
    if cfg["IMAGE_SIZE"] % m or cfg["IMAGE_SIZE"] <= 0:
        raise UserError(f"--image-size must be a positive multiple of 2**N_DOWNS = {m}, got {cfg['IMAGE_SIZE']} "
                        f"(or lower --n-downs)")
    for name in ("BATCH_SIZE", "EPOCHS", "NGF", "NDF", "NUM_D", "N_LAYERS_D", "RENDER_SIZE", "SAVE_EVERY",
                 "SAMPLE_EVERY", "LOG_EVERY", "N_DOWNS", "MAX_PIXELS", "MAX_BAD_STEPS"):
        if cfg[name] <= 0:
            raise UserError(f"--{name.lower().replace('_', '-')} must be positive, got {cfg[name]}")
    if cfg["GAN_MODE"] not in ("hinge", "lsgan", "vanilla"):
        raise UserError(f"--gan-mode must be hinge, lsgan or vanilla, got {cfg['GAN_MODE']!r}")
    if cfg["AMP"] not in ("bf16", "fp16", "off"):
        raise UserError(f"--amp must be bf16, fp16 or off, got {cfg['AMP']!r}")
    if not 0 <= cfg["EMA_DECAY"] < 1:
        raise UserError(f"--ema-decay must be in [0, 1), got {cfg['EMA_DECAY']}")
    if not 0 <= cfg["DROPOUT"] < 1:
        raise UserError(f"--dropout must be in [0, 1), got {cfg['DROPOUT']}")
    if cfg["EVAL_SIZE"] < 0:
        raise UserError(f"--eval-size must be 0 (full image) or a size in pixels, got {cfg['EVAL_SIZE']}")


def pick_device(cfg):
    name = cfg["DEVICE"]
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def autocast_for(device, cfg):
    """Mixed precision on CUDA (the dtype AMP names), plain float32 elsewhere."""
    if device.type != "cuda" or cfg["AMP"] == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if cfg["AMP"] == "bf16" else torch.float16)


# -----------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(obj, path):
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over
    the old one, so a crash at any moment leaves the previous complete checkpoint."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    except OSError:
        pass


def load_checkpoint(path):
    """Read a checkpoint or exported model without running code from it (weights_only=True)."""
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a weights file (pass --weights FILE)")
    if not os.path.isfile(path):
        raise UserError(f"{path}: weights file does not exist (train with --train, or pass --weights FILE)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can fail anywhere inside the unpickler (KeyError, UnpicklingError...)
        raise UserError(f"{path}: not a readable checkpoint (truncated, damaged or not made by this tool): "
                        f"{short_reason(e)}") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("cfg"), dict) and isinstance(ckpt.get("netG_ema"), dict)):
        raise UserError(f"{path}: not a checkpoint of this tool (no 'cfg' / 'netG_ema' entries)")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code "
                        f"({FORMAT_VERSION}); update the code")
    return ckpt


def load_generator(path, device):
    """The EMA generator stored in a checkpoint, rebuilt from the constants saved with it, in eval mode."""
    ckpt = load_checkpoint(path)
    cfg = {**CONSTANTS, **ckpt["cfg"]}
    try:
        netG = build_generator(cfg)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["netG_ema"].items()}
        netG.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: weights do not fit the network its constants describe "
                        f"(incompatible configuration): {short_reason(e)}") from None
    return netG.to(device).eval().requires_grad_(False), cfg


def short_reason(error, width=150):
    """The informative line of a library error, cut to one short line (the whole story is in --debug)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]  # load_state_dict: the first mismatch says more than the heading
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= width else text[: width - 3] + "..."


def export(cfg):
    """Keep only the EMA generator and the constants, in float16: the file we ship."""
    ckpt = load_checkpoint(cfg["WEIGHTS"])
    small = {"format_version": FORMAT_VERSION, "cfg": ckpt["cfg"], "step": ckpt.get("step", 0),
             "netG_ema": {k: v.half() if v.is_floating_point() else v for k, v in ckpt["netG_ema"].items()}}
    out = os.path.abspath(cfg["EXPORT"])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    save_checkpoint(small, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB, step {small['step']})")


# -----------------------------------------------------------------------------
# Training

@torch.no_grad()
def update_ema(netG_ema, netG, decay):
    """EMA of the parameters; buffers (batch-norm statistics, spectral-norm vectors) are copied."""
    torch._foreach_lerp_(list(netG_ema.parameters()), list(netG.parameters()), 1 - decay)
    for b_ema, b in zip(netG_ema.buffers(), netG.buffers()):
        b_ema.copy_(b)


class EpochSampler:
    """Indices epoch after epoch, each epoch a permutation seeded by (seed, epoch) and cut to whole
    batches, so a resumed run can start at any (epoch, batch) without replaying the data.

    With several processes (torchrun), a global batch is batch_size * world consecutive indices of
    the permutation and process `rank` takes every world-th of them: the shards never overlap."""

    def __init__(self, n, batch_size, seed, epoch=0, batch=0, rank=0, world=1):
        self.n, self.batch_size, self.seed, self.epoch, self.batch = n, batch_size, seed, epoch, batch
        self.rank, self.world = rank, world

    def __iter__(self):
        global_batch = self.batch_size * self.world
        epoch, start = self.epoch, self.batch * global_batch
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n, generator=g)[: self.n // global_batch * global_batch]
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


def save_sample_grid(netG_ema, sample_rgb, path, device):
    """One row per held-out image: gray input | prediction | ground truth."""
    with torch.no_grad():
        rgb = sample_rgb.to(device).float() / 255
        real_A, _ = lab_to_net(rgb_to_lab(rgb))
        fake = lab_to_rgb(net_to_lab(real_A, netG_ema(real_A)))
        gray = lab_to_rgb(net_to_lab(real_A, torch.zeros_like(fake[:, :2])))
    rows = torch.stack([gray, fake, rgb], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_image(rows.cpu(), path, nrow=3, padding=2, pad_value=1.0)


LOSS_NAMES = ("loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_FM", "loss_G_L1", "loss_G_VGG")


def build_gan(cfg, device):
    """Networks, EMA generator, optimizers (TTUR Adam), gradient scaler, autocast context and the
    optional VGG loss for training: (netG, netD, netG_ema, optG, optD, scaler, amp, vgg)."""
    netG = build_generator(cfg).to(device)
    netD = build_discriminator(cfg).to(device)
    netG_ema = copy.deepcopy(netG).eval().requires_grad_(False)
    betas = (cfg["BETA1"], cfg["BETA2"])
    optG = torch.optim.Adam(netG.parameters(), lr=cfg["LR_G"], betas=betas)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg["LR_D"], betas=betas)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg["AMP"] == "fp16")
    vgg = VGGLoss(cfg["VGG_WEIGHTS"]).to(device) if cfg["LAMBDA_VGG"] > 0 else None
    return netG, netD, netG_ema, optG, optD, scaler, autocast_for(device, cfg), vgg


def any_rank(flag, device):
    """True when flag is true in any training process (just the flag itself without torchrun)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() > 0


def split_pred(pred, n):
    """Split a discriminator output on a batch of [first n; rest] into the two outputs."""
    return [[f[:n] for f in feats] for feats in pred], [[f[n:] for f in feats] for feats in pred]


def train_step(netG, netD, optG, optD, scaler, real_A, real_B, cfg, amp, vgg=None):
    """One GAN step: D on a detached fake, then G with D frozen; each optimizer steps only when its
    loss and gradients are finite (in every process, under torchrun). Returns (ok, losses): ok is
    False when the step was skipped, losses a detached tensor in LOSS_NAMES order.

    netG and netD may be DistributedDataParallel wrappers; the G step runs the plain D module,
    since it needs no D gradients."""
    real_AB = torch.cat([real_A, real_B], dim=1)
    plainD = getattr(netD, "module", netD)

    # D step, on a detached fake; fake and real pairs go through D as one batch (one forward per backward)
    netD.requires_grad_(True)
    with amp:
        fake_B = netG(real_A)
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
        pred_fake = plainD(torch.cat([real_A, fake_B], dim=1))
        with torch.no_grad():
            pred_real = plainD(real_AB)  # features of the D that was just updated
        loss_G_GAN = gan_loss(pred_fake, True, cfg["GAN_MODE"], for_discriminator=False)
        loss_G_FM = feature_matching_loss(pred_fake, pred_real) * cfg["LAMBDA_FM"]
        loss_G_L1 = l1_loss(fake_B.float(), real_B) * cfg["LAMBDA_L1"]
        loss_G_VGG = torch.zeros((), device=real_A.device)
        if vgg is not None:
            loss_G_VGG = vgg(lab_to_rgb(net_to_lab(real_A, fake_B.float())),
                             lab_to_rgb(net_to_lab(real_A, real_B))) * cfg["LAMBDA_VGG"]
        loss_G = loss_G_GAN + loss_G_FM + loss_G_L1 + loss_G_VGG
    optG.zero_grad(set_to_none=True)
    if ok:
        scaler.scale(loss_G).backward()
        ok = not any_rank(not finite(loss_G, None if scaler.is_enabled() else netG), real_A.device)
    if ok:
        scaler.step(optG)
    scaler.update()
    return ok, torch.stack([loss_D_real, loss_D_fake, loss_G_GAN, loss_G_FM, loss_G_L1, loss_G_VGG]).detach()


def train(cfg, fresh=False):
    """Train the GAN; resumes from RUN_DIR/checkpoint.pt unless fresh. Returns the final step.

    Under torchrun every process trains on its shard of each batch (DistributedDataParallel);
    process 0 alone writes the log, samples and checkpoints."""
    rank, world, device = init_distributed(cfg)
    lock = lock_run_dir(cfg["RUN_DIR"]) if rank == 0 else None
    try:
        return _train(cfg, fresh, rank, world, device)
    finally:
        if lock is not None:
            lock.close()
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(cfg):
    """(rank, world size, device): from torchrun's environment, else (0, 1, the chosen device).
    One process per GPU with NCCL; on CPU, gloo (for testing the multi-process path)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg)
    if world == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _train(cfg, fresh, rank, world, device):
    master = rank == 0
    run_dir = cfg["RUN_DIR"]
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    log_path = os.path.join(run_dir, "log.csv")
    torch.manual_seed(cfg["SEED"] + rank)

    def log(msg):
        if master:
            tqdm.write(msg)

    train_files, val_files = split_files(cfg, log)
    dataset = ColorizationDataset(train_files, cfg["IMAGE_SIZE"], train=True, max_pixels=cfg["MAX_PIXELS"])
    val_set = ColorizationDataset(val_files, cfg["IMAGE_SIZE"], train=False, max_pixels=cfg["MAX_PIXELS"])
    sample_rgb = torch.stack([val_set[i] for i in range(len(val_set))])
    batch_size = min(cfg["BATCH_SIZE"], len(dataset) // world)  # per process
    if batch_size < 1:
        raise UserError(f"{len(dataset)} training images cannot be shared by {world} processes")
    steps_per_epoch = len(dataset) // (batch_size * world)
    total_steps = cfg["EPOCHS"] * steps_per_epoch
    if cfg["MAX_STEPS"] > 0:
        total_steps = min(total_steps, cfg["MAX_STEPS"])

    netG, netD, netG_ema, optG, optD, scaler, amp, vgg = build_gan(cfg, device)

    step, epoch, batch_in_epoch, bad_total = 0, 0, 0, 0
    if master:
        remove_stale_temporaries(run_dir, log)
    if os.path.exists(ckpt_path) and not fresh:
        ckpt = load_checkpoint(ckpt_path)
        changed = [f"{k}={ckpt['cfg'].get(k)!r} (now {cfg[k]!r})" for k in ARCH_KEYS if ckpt["cfg"].get(k) != cfg[k]]
        if changed:
            raise UserError(f"{ckpt_path} was trained with a different network: {', '.join(changed)}; "
                            f"use the same constants, another --run-dir, or --fresh")
        try:
            netG.load_state_dict(ckpt["netG"])
            netD.load_state_dict(ckpt["netD"])
            netG_ema.load_state_dict(ckpt["netG_ema"])
            optG.load_state_dict(ckpt["optG"])
            optD.load_state_dict(ckpt["optD"])
            scaler.load_state_dict(ckpt["scaler"])
            step, epoch, batch_in_epoch = ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]
            if master:
                torch.set_rng_state(ckpt["rng"]["torch"])
            else:
                torch.manual_seed(cfg["SEED"] + rank + 1000 * step)
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{ckpt_path}: cannot resume from it (not a full training checkpoint: "
                            f"{short_reason(e)}); use another --run-dir or --fresh") from None
        bad_total = ckpt.get("bad_steps", 0)
        if master and device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
        log(f"resumed from {ckpt_path} at step {step} (epoch {epoch})")
    if batch_in_epoch >= steps_per_epoch:  # the data set shrank since the checkpoint
        epoch, batch_in_epoch = epoch + 1, 0
    if master:
        trim_log(log_path, step)

    def checkpoint():
        if not master:
            return
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "step": step, "epoch": epoch,
                         "batch_in_epoch": batch_in_epoch, "bad_steps": bad_total,
                         "netG": netG.state_dict(), "netD": netD.state_dict(), "netG_ema": netG_ema.state_dict(),
                         "optG": optG.state_dict(), "optD": optD.state_dict(), "scaler": scaler.state_dict(),
                         "rng": rng}, ckpt_path)

    if step >= total_steps:
        log(f"nothing to do: {ckpt_path} is at step {step} of {total_steps} (raise --steps or --epochs)")
        return step

    sampler = EpochSampler(len(dataset), batch_size, cfg["SEED"], epoch, batch_in_epoch, rank, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["NUM_WORKERS"],
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg["NUM_WORKERS"] > 0,
        generator=torch.Generator().manual_seed(cfg["SEED"] + step + 1_000_003 * rank),
        worker_init_fn=_ignore_stop_signals)
    netG_train, netD_train = netG, netD  # checkpoints and EMA always use the plain modules
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        netG_train, netD_train = DDP(netG, device_ids=ids), DDP(netD, device_ids=ids)
    log(f"training on {world} x {device}: {len(dataset)} images, batch {batch_size} x {world}, "
        f"{steps_per_epoch} steps/epoch, steps {step} -> {total_steps}, run dir {run_dir}")

    # Ctrl-C and SIGTERM (a job scheduler) finish the current step, save, then exit; a second one aborts
    stop = []

    def request_stop(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        log(f"{signal.Signals(signum).name}: saving a checkpoint after this step (send again to abort)")

    previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    new_log = not os.path.exists(log_path) or os.path.getsize(log_path) == 0  # empty: killed before the header
    log_file = open(log_path if master else os.devnull, "a", newline="")
    writer = csv.writer(log_file)
    if new_log and master:
        writer.writerow(["step", "epoch", *LOSS_NAMES, "bad_steps", "images_per_s", "data_wait_s"])
        log_file.flush()
    sums, n_sum, bad_in_row = torch.zeros(len(LOSS_NAMES)), 0, 0
    t_log, data_wait = time.time(), 0.0
    pbar = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True, disable=not master)
    try:
        netG.train()
        netD.train()
        t_data = time.time()
        for batch in loader:
            data_wait += time.time() - t_data
            real_A, real_B = to_net_input(batch, device)
            ok, losses = train_step(netG_train, netD_train, optG, optD, scaler, real_A, real_B, cfg, amp, vgg)

            batch_in_epoch += 1
            if batch_in_epoch == steps_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            if not ok:
                bad_in_row += 1
                bad_total += 1
                log(f"warning: non-finite loss or gradient at step {step}; step skipped "
                    f"({bad_in_row} in a row, {bad_total} in all)")
                if bad_in_row >= cfg["MAX_BAD_STEPS"]:
                    raise UserError(f"{bad_in_row} steps in a row had a non-finite loss or gradient; stopping. "
                                    f"The last good checkpoint is {ckpt_path}; try lower learning rates "
                                    f"or --amp off")
                t_data = time.time()
                continue
            bad_in_row = 0
            step += 1
            update_ema(netG_ema, netG, min(cfg["EMA_DECAY"], (1 + step) / (10 + step)))

            values = losses.float().cpu()
            sums += values
            n_sum += 1
            pbar.update(1)
            pbar.set_postfix(D=f"{(values[0] + values[1]).item() / 2:.3f}", G=f"{values[2].item():.3f}",
                             FM=f"{values[3].item():.3f}", L1=f"{values[4].item():.3f}", ep=epoch)
            if step % cfg["LOG_EVERY"] == 0 or step == total_steps:
                dt = time.time() - t_log
                writer.writerow([step, epoch] + [f"{v:.5f}" for v in (sums / n_sum).tolist()]
                                + [bad_total, f"{n_sum * batch_size * world / dt:.2f}", f"{data_wait:.2f}"])
                log_file.flush()
                sums, n_sum, t_log, data_wait = torch.zeros(len(LOSS_NAMES)), 0, time.time(), 0.0
            if master and (step % cfg["SAMPLE_EVERY"] == 0 or step == total_steps):
                save_sample_grid(netG_ema, sample_rgb, os.path.join(run_dir, "samples", f"step_{step:07d}.png"),
                                 device)
            if step % cfg["SAVE_EVERY"] == 0 or step == total_steps:
                checkpoint()
            if step >= total_steps:
                break
            if any_rank(stop, device):  # every process stops after the same step
                checkpoint()
                log(f"interrupted: saved {ckpt_path} at step {step}; run the same command again to resume")
                raise KeyboardInterrupt
            t_data = time.time()
    finally:
        pbar.close()
        log_file.close()
        for s, handler in previous_handlers.items():
            signal.signal(s, handler)
    log(f"done: step {step}, checkpoint {ckpt_path}")
    return step


def _ignore_stop_signals(worker_id):
    # data workers leave Ctrl-C / SIGTERM to the main process, which saves and then shuts them down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def finite(loss, net=None):
    """True when the loss (and, given a network, every gradient) is finite; one device sync."""
    checks = [loss.detach().float().reshape(1)]
    if net is not None:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if grads:
            checks.append(torch.stack(torch._foreach_norm(grads)).float())
    return bool(torch.isfinite(torch.cat(checks)).all())


def lock_run_dir(run_dir):
    """Create run_dir and hold an exclusive lock on it, so a second run there stops with a message
    instead of both writing one checkpoint. The OS drops the lock when the process dies, even by kill -9."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        lock = open(os.path.join(run_dir, "lock"), "w")
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {e.strerror or e}") from None
    try:
        import fcntl  # POSIX only; elsewhere runs are not locked
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:
        pass
    except OSError:
        lock.close()
        raise UserError(f"{run_dir} is in use by another training run; wait for it to end or use another --run-dir")
    return lock


def remove_stale_temporaries(run_dir, log):
    """Delete the temporary files of saves that were killed before their rename (one run per run dir)."""
    for f in sorted(os.listdir(run_dir)):
        if f.startswith(("checkpoint.pt.tmp", "log.csv.tmp")):
            os.remove(os.path.join(run_dir, f))
            log(f"removed {os.path.join(run_dir, f)}, left by a save that did not finish")


def trim_log(path, step):
    """Drop log rows written after the checkpoint we resume from (and a row cut short by a kill),
    so the CSV matches the run. Rewritten atomically: a kill here loses nothing."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if len(r) == len(rows[0]) and r[0].isdigit() and int(r[0]) <= step]
    if len(kept) != len(rows):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        os.replace(tmp, path)


# -----------------------------------------------------------------------------
# Inference

def colorize_image(netG, rgb, render_size, device):
    """Colorize one photo: (H, W, 3) float RGB in [0, 1] (colour or gray) -> (H, W, 3) RGB.

    The network sees the luminance resized to render_size on its longer side; the predicted ab
    is upsampled to the original size and joined with the original full-resolution L.
    """
    with torch.no_grad():
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device)
        real_A, _ = lab_to_net(rgb_to_lab(x))                        # (1, 1, H, W): colour is discarded
        H, W = real_A.shape[-2:]
        small = resize_long_side(real_A, min(render_size, max(H, W))).clamp(-1, 1)
        h, w = small.shape[-2:]
        m = 2 ** netG.n_downs
        small = F.pad(small, (0, -w % m, 0, -h % m), mode="replicate")
        fake_B = netG(small)[..., :h, :w].float()
        fake_B = F.interpolate(fake_B, size=(H, W), mode="bilinear", align_corners=False)
        out = lab_to_rgb(net_to_lab(real_A, fake_B))
    return out[0].permute(1, 2, 0).cpu().numpy()


def output_paths(inputs, files, out_dir):
    """Output path for each file: folders are mirrored under out_dir so equal names never collide,
    a file is never written over its input, and two inputs never share an output."""
    roots = [os.path.abspath(p) for p in inputs if os.path.isdir(p)]
    taken, result = {os.path.abspath(f) for f in files}, {}
    for f in files:
        af = os.path.abspath(f)
        root = next((r for r in roots if af.startswith(r + os.sep)), None)
        rel = os.path.relpath(os.path.dirname(af), root) if root else "."
        stem = os.path.splitext(os.path.basename(f))[0]
        out = os.path.normpath(os.path.join(out_dir, rel, stem + ".png"))
        n = 1
        while out in taken:
            out = os.path.normpath(os.path.join(out_dir, rel, f"{stem}_{n}.png"))
            n += 1
        taken.add(out)
        result[f] = out
    return result


def infer(cfg, inputs, debug=False):
    """Colorize every image under inputs into OUT_DIR; returns the number of files that failed."""

    device = pick_device(cfg)
    netG, _ = load_generator(cfg["WEIGHTS"], device)
    files, failed = [], []
    for p in inputs:  # a missing input is reported, the others still run
        try:
            files += find_images([p])
        except FileNotFoundError:
            failed.append((p, "no such file, folder or pattern"))
    files = sorted(set(files))
    out_dir = make_output_dir(cfg["OUT_DIR"])
    targets = output_paths(inputs, files, out_dir)
    n_ok = 0
    for f in tqdm(files, desc="colorize", unit="img", dynamic_ncols=True):
        try:
            rgb, alpha = load_image(f, cfg["MAX_PIXELS"])
            out = colorize_image(netG, rgb, cfg["RENDER_SIZE"], device)
            img = np.round(out * 255).astype(np.uint8)
            if alpha is not None:
                img = np.concatenate([img, np.round(alpha * 255).astype(np.uint8)[..., None]], axis=2)
            write_png(img, targets[f])
            n_ok += 1
        except Exception as e:  # keep going: one bad file must not end a batch of thousands
            if debug and not isinstance(e, BadImageError):
                raise
            failed.append((f, failure_reason(f, e)))
    print(f"colorized {n_ok} of {n_ok + len(failed)} files into {out_dir}")
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
    for f, why in failed:
        print(f"failed: {f}: {why}", file=sys.stderr)
    return len(failed)


def make_output_dir(path):
    """Create an output folder, or stop with a message naming it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {path}: {e.strerror or e}") from None
    return path


def failure_reason(path, error):
    """One line saying why a file failed: a BadImageError's own reason, else the unexpected error."""
    if isinstance(error, BadImageError):
        return str(error).removeprefix(path + ": ")
    return f"unexpected error {type(error).__name__}: {error} (run with --debug for details)"


def write_png(img, path):
    """Save a uint8 (H, W, 3 or 4) array as PNG via a temporary file, so a kill never leaves half an image."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(img).save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise BadImageError(f"{path}: cannot write the output: {e.strerror or e}") from None


# -----------------------------------------------------------------------------
# Evaluation

METRICS = ("psnr", "ssim", "ciede2000", "colorfulness")


def to_8bit(rgb):
    """Round float RGB to what an 8-bit file stores, so scores match the PNGs --infer writes."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.float32) / 255


def gray_version(rgb):
    """The photo without its colour (Lab a = b = 0) as an 8-bit image with R = G = B: the input a
    user of --infer would have, and the gray baseline."""
    lab = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    lab[:, 1:] = 0
    gray = lab_to_rgb(lab)[0].mean(0)  # the channels differ only by rounding in the colour matrices
    return to_8bit(gray[..., None].expand(-1, -1, 3).numpy())


def center_square(rgb, size):
    """Resize the shorter side to size (antialiased) and cut the central size x size square."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    x = v2.functional.center_crop(v2.functional.resize(x, size, antialias=True), [size, size])
    return to_8bit(x.permute(1, 2, 0).numpy())


def save_comparison_sheet(panels, path, height=256):
    """One row per image, gray | ours | truth, each scaled to the same height; white gaps."""
    gap, rows = 4, []
    for row in panels:
        imgs = [Image.fromarray(np.round(p * 255).astype(np.uint8)) for p in row]
        imgs = [im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS) for im in imgs]
        rows.append(imgs)
    width = max(sum(im.width for im in r) + gap * (len(r) - 1) for r in rows)
    header = 16
    sheet = Image.new("RGB", (width, header + len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (title, im) in enumerate(zip(("gray", "ours", "truth"), rows[0])):
        draw.text((k * (im.width + gap) + 4, 2), title, fill="black")
    for i, r in enumerate(rows):
        x = 0
        for im in r:
            sheet.paste(im, (x, header + i * (height + gap)))
            x += im.width + gap
    sheet.save(path)


def summarize(rows):
    """Means over the colour images of each metric, for ours and the gray baseline, and the
    colourfulness of each against the ground truth's (ratio and absolute difference of the means)."""
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {"truth": {"colorfulness": float(np.mean([r["colorfulness_truth"] for r in ok]))}}
    for method, suffix in (("ours", ""), ("gray", "_gray")):
        means = {m: float(np.nanmean([r[m + suffix] for r in ok])) for m in METRICS}  # NaN: SSIM of a tiny image
        ratio, diff = colorfulness_gap([r["colorfulness" + suffix] for r in ok], [r["colorfulness_truth"] for r in ok])
        summary[method] = {**means, "colorfulness_ratio": ratio, "colorfulness_abs_diff": diff}
    return summary


def format_table(summary):
    lines = [f"{'metric':38s}{'gray':>10s}{'ours':>10s}"]
    for key, label, fmt in (("psnr", "PSNR, dB (higher is better)", ".2f"), ("ssim", "SSIM (higher is better)", ".4f"),
                            ("ciede2000", "CIEDE2000 (lower is better)", ".2f"),
                            ("colorfulness", f"colourfulness (truth {summary['truth']['colorfulness']:.2f})", ".2f"),
                            ("colorfulness_ratio", "colourfulness / truth's (1 is best)", ".3f"),
                            ("colorfulness_abs_diff", "|colourfulness - truth's| (lower)", ".2f")):
        lines.append(f"{label:38s}{summary['gray'][key]:>10{fmt}}{summary['ours'][key]:>10{fmt}}")
    return "\n".join(lines)


def evaluate(cfg, data_dir, out_dir, debug=False):
    """Score the colorizer on the colour photos under data_dir; returns the number of files that failed.

    Each photo's gray version goes through colorize_image at RENDER_SIZE as with --infer, and is
    compared with the photo, beside the gray version itself as a baseline. With EVAL_SIZE the photo
    is first cut to an EVAL_SIZE square. Already-gray photos are listed and left out of the means.
    Writes metrics.csv (one row per file), summary.json and sheet.png (gray | ours | truth for
    NUM_SAMPLES evenly spaced files) into out_dir, and prints a table.
    """
    device = pick_device(cfg)
    netG, _ = load_generator(cfg["WEIGHTS"], device)
    try:
        files = find_images([data_dir])
    except FileNotFoundError as e:
        raise UserError(f"--eval: {e}") from None
    if not files:
        raise UserError(f"--eval {data_dir}: no image files there (extensions {', '.join(sorted(IMG_EXTENSIONS))})")
    make_output_dir(out_dir)
    root = data_dir if os.path.isdir(data_dir) else os.path.dirname(data_dir)
    sample = set(files[:: max(1, len(files) // cfg["NUM_SAMPLES"])][: cfg["NUM_SAMPLES"]])
    rows, panels = [], []
    for f in tqdm(files, desc="eval", unit="img", dynamic_ncols=True):
        row = {"file": os.path.relpath(f, root), "status": "ok"}
        try:
            truth, _ = load_image(f, cfg["MAX_PIXELS"])
            if cfg["EVAL_SIZE"]:
                truth = center_square(truth, cfg["EVAL_SIZE"])
            row["height"], row["width"] = truth.shape[:2]
            if is_grayscale(truth):
                rows.append({**row, "status": "gray"})
                continue
            gray = gray_version(truth)
            ours = to_8bit(colorize_image(netG, gray, cfg["RENDER_SIZE"], device))
            row.update(image_metrics(ours, truth))
            row.update({k + "_gray": v for k, v in image_metrics(gray, truth).items()})
            row["colorfulness_truth"] = colorfulness(truth)
            if f in sample:
                panels.append((gray, ours, truth))
        except Exception as e:  # one bad file must not end the evaluation
            if debug and not isinstance(e, BadImageError):
                raise
            row = {"file": row["file"], "status": "failed", "error": failure_reason(f, e)}
        rows.append(row)

    columns = ["file", "status", "width", "height"] + list(METRICS) + [m + "_gray" for m in METRICS] \
        + ["colorfulness_truth", "error"]
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns)
        writer.writeheader()
        writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows)
    gray_files = [r["file"] for r in rows if r["status"] == "gray"]
    failed = [(r["file"], r["error"]) for r in rows if r["status"] == "failed"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    for f in gray_files:
        print(f"gray, left out: {f}")
    for f, why in failed:
        print(f"failed: {f}: {why}", file=sys.stderr)
    if not n_ok:
        raise UserError(f"--eval {data_dir}: no colour photos could be scored "
                        f"({len(gray_files)} gray, {len(failed)} failed)")
    if panels:
        save_comparison_sheet(panels, os.path.join(out_dir, "sheet.png"))
    summary = {"data": os.path.abspath(data_dir), "weights": cfg["WEIGHTS"], "render_size": cfg["RENDER_SIZE"],
               "eval_size": cfg["EVAL_SIZE"], "images": n_ok, "gray_left_out": gray_files,
               "failed": [f for f, _ in failed], **summarize(rows)}
    with open(os.path.join(out_dir, "summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    size = f"{cfg['EVAL_SIZE']} px centre squares" if cfg["EVAL_SIZE"] else "full size"
    print(f"\n{n_ok} colour photos from {data_dir} at {size}, rendered at {cfg['RENDER_SIZE']} px; "
          f"{len(gray_files)} gray left out, {len(failed)} failed")
    print(format_table(summary))
    print(f"wrote metrics.csv, summary.json and sheet.png to {out_dir}")
    return len(failed)


# -----------------------------------------------------------------------------

def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        cfg = make_config(args)
        if args.train:
            train(cfg, fresh=args.fresh)
        elif args.infer:
            return 1 if infer(cfg, args.infer, debug=args.debug) else 0
        elif args.export:
            export({**cfg, "EXPORT": args.export})
        elif args.eval:
            out_dir = cfg["OUT_DIR"] if args.OUT_DIR is not None else cfg["EVAL_DIR"]
            return 1 if evaluate(cfg, args.eval, out_dir, debug=args.debug) else 0
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
