"""Colorize black-and-white photos with a conditional GAN in Lab space.

    python colorize_base.py --train [--data DIR] [--steps N] ...   train (resumes in RUN_DIR)
    python colorize_base.py --infer img.jpg folder/ "scans/*.tif"   colorize into OUT_DIR
    python colorize_base.py --eval photos/ [--eval-size 256]        quality metrics into EVAL_DIR
    python colorize_base.py --infer frames/ --video                 a folder of numbered frames as one film, frames.mp4
    python colorize_base.py --eval frames/ --video                  one clip's colour frames, scored in time too
    python colorize_base.py --export small.pt --weights run/checkpoint.pt
    python colorize_base.py --serve                                  a local web page, http://127.0.0.1:7860

Every constant below can be overridden by name on the command line:
IMAGE_SIZE -> --image-size 128 (short forms: --size, --data, --steps). In Python:

    from colorize_base import Colorizer
    Colorizer.load().colorize("old.jpg").save("old_colour.png")
"""
import argparse
import copy
import io
import math
import os
import re
import sys
import textwrap
import time
from contextlib import nullcontext

from tqdm import tqdm

import backends
import video
from colorizer import Colorizer, colorize_files  # noqa: F401 (Colorizer: the Python API)
from files import OneLineParser, UserError, describe_os_error, display_name, remove_stale_temporaries, sigterm_as_interrupt

try:  # all but --infer need PyTorch; without it (requirements-lite.txt) --infer runs ONNX models on onnxruntime
    import torch
    import torch.distributed as dist

    import losses
    import models
    from checkpoint import TrainState, export, file_constants, load_checkpoint
    from data import training_data
    from evaluate import evaluate, evaluate_video
    from models import build_discriminator, build_generator, memory_format
    from onnx_export import export_onnx
    from runtime import (CSVLog, any_rank, autocast_for, describe_device, init_distributed, lock_run_dir, make_loader,
                         rng_state, save_sample_grid, stop_signals, wrap_for_processes)
    from training import build_class_loss, build_perceptual, build_vgg, resume, start_generator, step
except ModuleNotFoundError as e:
    if e.name != "torch":
        raise
    torch = None

# -----------------------------------------------------------------------------
# Constants (relative paths are relative to this file; command-line paths to the current folder)
DATA_DIR = "../shared/datasets/bsds500/train,../shared/datasets/bsds500/val"  # comma-separated folders, files or globs of colour photos
VAL_DIR = ""                        # held-out photos for the sample grids (a typo is refused); "" holds out NUM_SAMPLES from DATA_DIR
RUN_DIR = "runs/default"            # checkpoint.pt, log.csv and samples/ of a training run
WEIGHTS = "weights/colorizer.pt"    # generator used by --infer: an exported model or a run's checkpoint.pt
INIT = ""                           # --train from scratch (""), or fine-tune: G and its EMA start from this model or checkpoint
OUT_DIR = "results/colorized"       # where --infer writes <stem>.png
EVAL_DIR = "results/eval"           # where --eval writes metrics.csv, summary.json and sheet.png (--out overrides)
IMAGE_SIZE = 128                    # training crop, pixels: a multiple of the generator's stride (2**N_DOWNS; 32 with a pretrained ENCODER)
BATCH_SIZE = 16                     # images per step
EPOCHS = 200                        # passes over the training set (an epoch: as many draws as photos)
SOURCE_BALANCE = 0.0                # 0: every photo equally often; 1: every source folder (first level under a DATA_DIR entry) equally often
MOSAIC = 0.0                        # share of training images made 2x2 mosaics of four half-size photos (subjects at scene scale)
EXPOSURE = 0.0                      # training: each image's exposure changes by up to this many stops, in linear light
TARGET_SATURATION = 1.0             # training: the true colour (Lab ab) the generator learns is multiplied by this (DDColor-style 1.2: more vivid)
MAX_STEPS = 0                       # stop after this many generator steps; 0 = no limit
LR_G = 1e-4                         # generator Adam learning rate (TTUR, SAGAN)
LR_D = 4e-4                         # discriminator Adam learning rate (TTUR, SAGAN)
BETA1 = 0.0                         # Adam beta1 for both networks (SAGAN)
BETA2 = 0.9                         # Adam beta2 for both networks (SAGAN)
GAN_MODE = "hinge"                  # hinge, lsgan or vanilla
LAMBDA_L1 = 100.0                   # weight of the L1 loss on ab (pix2pix)
L1_NEUTRAL_WEIGHT = 0.0             # L1 counts 1 + this where the truth is white or light gray (L* >= 50, chroma < 8): tints on white cost more
LAMBDA_FM = 10.0                    # weight of the feature-matching loss (pix2pixHD)
LAMBDA_VGG = 0.0                    # weight of the VGG19 perceptual loss; 0 = off (pix2pixHD uses 10)
VGG_WEIGHTS = ""                    # path to torchvision's vgg19-dcbb9e9d.pth, needed when LAMBDA_VGG > 0
ENCODER = "unet"                    # generator encoder: unet (pix2pix, from scratch) or efficientnet_lite0, _lite1, _lite2 (ImageNet-pretrained)
ENCODER_LR_MULT = 0.1               # a pretrained encoder learns at LR_G times this once unfrozen
FREEZE_STEPS = 0                    # a pretrained encoder is held fixed (weights, batch-norm statistics) for this many generator steps
NOGAN_STEPS = 0                     # the first this many generator steps train G alone on L1 (+ LAMBDA_PERC, LAMBDA_CF), no D (DeOldify's NoGAN)
D_WARMUP_STEPS = 0                  # then this many steps train D alone, G fixed (DeOldify's critic pretraining; new Ds of a fine-tune)
LAMBDA_PERC = 0.0                   # weight of the perceptual loss on a frozen ImageNet EfficientNet-Lite (ENCODER's, or lite0); 0 = off
LAMBDA_CF = 0.0                     # weight of DDColor's colourfulness loss, 1 - colourfulness of the RGB output; 0 = off (DDColor: 0.5)
CF_MODE = "ddcolor"                 # the colourfulness loss: ddcolor (more colour, always) or truth (the true photo's colourfulness, per image)
AB_CLASSES = False                  # a pretrained-ENCODER generator predicts colour as classes of ab (Zhang et al. 2016); --init may add them
LAMBDA_CE = 1.0                     # with AB_CLASSES: weight of the cross-entropy on the colour classes
CLASS_REBALANCE = 1.0               # with AB_CLASSES: rare colours weigh 1 / ((1 - this) p + this / Q); 1 = all alike (Zhang et al.: 0.5)
CLASS_NEUTRAL_WEIGHT = 0.0          # with AB_CLASSES: where the truth is white or light gray, a pixel weighs at least 1 + this (the average: 1)
CLASS_LR_MULT = 10.0                # with AB_CLASSES: the colour classes' own layers learn this many times faster than LR_G (they start at zero)
ANNEALED_T = 0.38                   # with AB_CLASSES: annealed-mean temperature: 1 the mean colour, lower the likeliest (Zhang: 0.38)
NGF = 32                            # generator width of the first layer, channels
N_DOWNS = 6                         # generator depth: 64x down, so inputs are padded to multiples of 64
ATTN_FACTORS = (8,)                 # self-attention after the decoder level at input/f, for each f (8: 32x32 of a 256 input)
SPECTRAL_NORM = True                # spectral norm on G and D convolutions (SAGAN)
DROPOUT = 0.0                       # dropout in the three innermost decoder blocks, 0..1 (pix2pix uses 0.5)
NDF = 32                            # discriminator width of the first layer, channels (pix2pix: 64; 32 halves the CPU step time)
N_LAYERS_D = 3                      # strided layers per PatchGAN (3: 70x70 patches)
NUM_D = 3                           # discriminators, one per image scale (pix2pixHD)
HINT_INPUT = False                  # the generator also takes colour hints (Zhang et al. 2017); --init from an automatic model adds them
HINT_DECODER = True                 # with a pretrained ENCODER, hints also enter each decoder level (their mean colour per cell)
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
BACKEND = "auto"                    # inference engine: torch, onnx (onnxruntime: an .onnx WEIGHTS, or the .onnx beside a .pt) or auto
SATURATION = 1.0                    # inference: the predicted colour (Lab ab) is multiplied by this; 1 = as predicted
HINT_SPREAD = 0.125                 # inference with hints: the network's error at each hint is spread this far (x the longer side; 0 = off)
TEMPORAL = 0.95                     # film: share of a still pixel's past colour (Lab ab) kept each frame, in [0, 1); 0 = every frame alone
FRAME_RATE = 25.0                   # film from a folder of frames (--infer FOLDER --video): frames per second written
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
ADDABLE_KEYS = ("HINT_INPUT", "HINT_DECODER", "AB_CLASSES")  # --init may add hint inputs and colour classes, never take them away
ARCH_KEYS = G_ARCH_KEYS + ADDABLE_KEYS + ("NDF", "N_LAYERS_D", "NUM_D")
PATH_KEYS = ("DATA_DIR", "VAL_DIR", "RUN_DIR", "WEIGHTS", "INIT", "OUT_DIR", "VGG_WEIGHTS", "EVAL_DIR")
ALIASES = {"DATA_DIR": ["--data"], "IMAGE_SIZE": ["--size"], "MAX_STEPS": ["--steps"], "OUT_DIR": ["--out"]}


def constant_comments():
    """{name: its comment} from the constants block of this file's own text: each constant is described
    once, there, and --help and the README's table (made by tests/test_docs.py) show that description."""
    with open(__file__, encoding="utf-8") as f:
        block = f.read().split("\n# " + "-" * 77 + "\n")[1]  # the first rule comment to the second
    found = (re.fullmatch(r"([A-Z][A-Z0-9_]*) = .*?  # (.*)", line.strip()) for line in block.splitlines())
    return {m.group(1): m.group(2) for m in found if m}


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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _split_lines(self, text, width):  # never break "batch-norm" into "batch-" / "norm"
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser():
    p = OneLineParser(allow_abbrev=False, description="Colorize black-and-white photos with a conditional GAN.",
                      formatter_class=_HelpFormatter,
                      epilog="Any constant at the top of colorize_base.py can be set by name, "
                             "e.g. --lambda-l1 50 --ngf 64 --attn-factors 8,16.")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--train", action="store_true", help="train (resumes from RUN_DIR/checkpoint.pt)")
    mode.add_argument("--infer", nargs="*", metavar="PATH", help="colorize files, folders or globs (after --, every "
                                                                 "argument is a path, even one starting with -)")
    mode.add_argument("--export", metavar="FILE", help="write the EMA generator of --weights as a small float16 file; "
                                                        "FILE.onnx: as an ONNX model, for onnxruntime without PyTorch "
                                                        "(pip install -r requirements-onnx.txt)")
    mode.add_argument("--eval", metavar="DIR", help="colorize the gray version of every colour photo in DIR and score "
                                                    "it against the photo, beside a gray baseline (into EVAL_DIR or --out)")
    mode.add_argument("--serve", action="store_true", help="start the local web page (pip install -r "
                                                           "requirements-ui.txt), at http://127.0.0.1:7860")
    p.add_argument("--port", type=int, default=7860, help="with --serve: the port (default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="with --serve: the address to listen on (default 127.0.0.1, "
                                                       "this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--video", action="store_true", help="a folder of numbered frames is one clip, in the order of their "
                                                        "names (frame_2 before frame_10): with --infer written as "
                                                        "<folder>.mp4 at FRAME_RATE; with --eval its colour frames scored "
                                                        "per frame and in time (CDC, flicker), through the temporal "
                                                        "filter (TEMPORAL) and each frame alone")
    p.add_argument("--fresh", action="store_true", help="with --train: start over, ignoring a checkpoint in RUN_DIR")
    p.add_argument("--hints", metavar="FILE|N", help="with --infer: a JSON file of colour hints for the one photo "
                                                     "(see the README); with --eval: reveal N true colours per photo "
                                                     "as hints. Needs a model trained with HINT_INPUT")
    p.add_argument("--reference", metavar="PHOTO|truth-aug|DIR", help="a colour photo whose colours guide the "
                   "photos (the parts that match become hints; yours win where you give them): with --infer one "
                   "photo for all; with --eval truth-aug (each photo's own truth, cropped, flipped and rescaled) or a "
                   "folder of photos named like them. Needs a hint model (HINT_INPUT) on the torch backend")
    p.add_argument("--about", metavar="TEXT", help="with --export: what the model was trained on, stored in the file")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    comments = constant_comments()
    for name, default in CONSTANTS.items():
        flags = [flag(name)] + ALIASES.get(name, [])
        if isinstance(default, bool):
            kind = _parse_bool
        elif isinstance(default, tuple):
            kind = _parse_ints
        else:
            kind = type(default)
        p.add_argument(*flags, dest=name, type=kind, default=None, metavar=type(default).__name__.upper(),
                       help=f"{comments[name]} (default: {default!r})".replace("%", "%%"))
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
    for name in ("MAX_STEPS", "NUM_WORKERS", "EVAL_SIZE", "THREADS", "SATURATION", "FREEZE_STEPS", "NOGAN_STEPS",
                 "D_WARMUP_STEPS"):
        need(cfg[name] >= 0, name, "0 or more")
    for name in ("LR_G", "LR_D"):
        need(cfg[name] > 0, name, "a positive learning rate")
    need(0 < cfg["FRAME_RATE"] <= 1000, "FRAME_RATE", "frames per second in (0, 1000]")
    for name in ("BETA1", "BETA2", "EMA_DECAY", "DROPOUT", "TEMPORAL"):
        need(0 <= cfg[name] < 1, name, "in [0, 1)")
    for name in ("SOURCE_BALANCE", "MOSAIC", "HINT_SHARE", "HINT_COLOUR_BIAS"):
        need(0 <= cfg[name] <= 1, name, "in [0, 1]")
    need(0 <= cfg["EXPOSURE"] <= 4, "EXPOSURE", "in [0, 4] stops")
    need(0.5 <= cfg["TARGET_SATURATION"] <= 2, "TARGET_SATURATION", "in [0.5, 2]")
    need(0 <= cfg["HINT_SPREAD"] <= 10, "HINT_SPREAD", "in [0, 10] (x the render's longer side)")
    need(0 < cfg["HINT_GEOM_P"] <= 1, "HINT_GEOM_P", "in (0, 1]")
    need(cfg["HINT_PATCH"] > 0, "HINT_PATCH", "positive")
    need(cfg["HINT_LR_MULT"] > 0, "HINT_LR_MULT", "positive")
    need(cfg["CLASS_LR_MULT"] > 0, "CLASS_LR_MULT", "positive")
    for name in ("LAMBDA_L1", "L1_NEUTRAL_WEIGHT", "LAMBDA_FM", "LAMBDA_VGG", "LAMBDA_PERC", "LAMBDA_CF", "LAMBDA_CE",
                 "CLASS_NEUTRAL_WEIGHT", "ENCODER_LR_MULT"):
        need(cfg[name] >= 0, name, "0 or more")
    need(0 < cfg["CLASS_REBALANCE"] <= 1, "CLASS_REBALANCE", "in (0, 1]")
    need(0.01 <= cfg["ANNEALED_T"] <= 10, "ANNEALED_T", "in [0.01, 10]")
    need(cfg["N_DOWNS"] <= 10, "N_DOWNS", "at most 10 (1024x down)")
    # upper bounds: far beyond any real use, low enough that no allocation or thread pool blows up
    for names, most in ((("IMAGE_SIZE", "BATCH_SIZE"), 4096), (("RENDER_SIZE",), 8192), (("EVAL_SIZE",), 16384),
                        (("NGF", "NDF", "THREADS"), 1024), (("NUM_D",), 8), (("N_LAYERS_D",), 10),
                        (("NUM_SAMPLES", "NUM_WORKERS", "HINT_PATCH"), 256), (("MAX_PIXELS",), 4_000_000_000),
                        (("EPOCHS", "MAX_BAD_STEPS"), 10 ** 9), (("LR_G", "LR_D"), 1.0), (("SATURATION",), 100.0),
                        (("MAX_STEPS", "SAVE_EVERY", "SAMPLE_EVERY", "LOG_EVERY", "FREEZE_STEPS", "NOGAN_STEPS",
                          "D_WARMUP_STEPS"), 10 ** 12),
                        (("LAMBDA_L1", "L1_NEUTRAL_WEIGHT", "LAMBDA_FM", "LAMBDA_VGG", "LAMBDA_PERC", "LAMBDA_CF",
                          "LAMBDA_CE", "CLASS_NEUTRAL_WEIGHT"), 1e6),
                        (("ENCODER_LR_MULT", "HINT_LR_MULT", "CLASS_LR_MULT"), 1e3)):
        for name in names:
            need(cfg[name] <= most, name, f"at most {most if isinstance(most, int) else f'{most:g}'}")
    if torch is not None:  # the lists live with the networks and losses (torch-free --infer has neither)
        need(cfg["ENCODER"] in models.ENCODERS, "ENCODER", ", ".join(models.ENCODERS))
        need(cfg["GAN_MODE"] in losses.GAN_MODES, "GAN_MODE", ", ".join(losses.GAN_MODES))
        need(cfg["CF_MODE"] in losses.CF_MODES, "CF_MODE", ", ".join(losses.CF_MODES))
    unet = cfg["ENCODER"] == "unet"
    need(unet or cfg["NGF"] % 2 == 0, "NGF", "even with a pretrained ENCODER")
    need(not (unet and cfg["AB_CLASSES"]) or cfg["INIT"], "AB_CLASSES",  # with INIT, the encoder is INIT's: start_state
         "false with the unet ENCODER (the classes are for a pretrained one)")
    downs = cfg["N_DOWNS"] if unet else 5  # EfficientNet-Lite: stride 32
    m = 2 ** downs
    need(cfg["IMAGE_SIZE"] % m == 0, "IMAGE_SIZE", f"a positive multiple of 2**N_DOWNS = {m}" if unet
         else f"a positive multiple of {m} (the stride of {cfg['ENCODER']})")
    levels = [2 ** i for i in range(1, downs)]
    need(all(f in levels for f in cfg["ATTN_FACTORS"]), "ATTN_FACTORS",
         f"decoder levels of this network, some of {','.join(map(str, levels))} (empty for none)")
    need(0 <= cfg["SEED"] < 2 ** 32, "SEED", "in [0, 2**32)")
    need(cfg["AMP"] in ("bf16", "fp16", "off"), "AMP", "bf16, fp16 or off")
    need(re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg["DEVICE"]), "DEVICE", "auto, cpu, cuda or cuda:N")
    need(cfg["BACKEND"] in backends.BACKENDS, "BACKEND", ", ".join(backends.BACKENDS))


# -----------------------------------------------------------------------------
# Training: the optimizer recipe, where a run starts from, and the loop

def build_state(cfg, device):
    """Fresh networks, the EMA generator, TTUR Adam optimizers (the new hint branch and colour classes
    faster, a pretrained encoder slower than the rest of G) and the gradient scaler (float16 only)."""
    netG = build_generator(cfg).to(device, memory_format=memory_format(cfg))
    netD = build_discriminator(cfg).to(device, memory_format=memory_format(cfg))
    netG_ema = copy.deepcopy(netG).eval().requires_grad_(False)
    hint = models.hint_parameters(netG)
    encoder = list(netG.encoder.parameters()) if hasattr(netG, "encoder") else []
    classes = list(netG.classes.parameters()) if getattr(netG, "classes", None) is not None else []
    special = {id(p) for p in hint + encoder + classes}
    groups = [{"params": [p for p in netG.parameters() if id(p) not in special]}]
    if hint:
        groups.append({"params": hint, "lr": cfg["LR_G"] * cfg["HINT_LR_MULT"]})
    if classes:
        groups.append({"params": classes, "lr": cfg["LR_G"] * cfg["CLASS_LR_MULT"]})
    if encoder:
        groups.append({"params": encoder, "lr": cfg["LR_G"] * cfg["ENCODER_LR_MULT"]})
    betas = (cfg["BETA1"], cfg["BETA2"])
    optG = torch.optim.Adam(groups, lr=cfg["LR_G"], betas=betas)
    optD = torch.optim.Adam(netD.parameters(), lr=cfg["LR_D"], betas=betas)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg["AMP"] == "fp16")
    return TrainState(netG, netD, netG_ema, optG, optD, scaler)


def start_state(cfg, ckpt_path, fresh, rank, device, log):
    """(cfg, TrainState) to train from: resumed from the run's checkpoint unless fresh, else started
    from INIT (fine-tuning: INIT's generator constants and weights), else new. Temporary files of an
    interrupted save are removed first."""
    ckpt = load_checkpoint(ckpt_path) if os.path.exists(ckpt_path) and not fresh else None
    init = load_checkpoint(cfg["INIT"]) if cfg["INIT"] and ckpt is None else None
    if cfg["INIT"]:  # fine-tuning: the generator is INIT's, also when the run later resumes; HINT_INPUT
        source = file_constants(ckpt or init, CONSTANTS)  # may add hints to an automatic model, never take them away
        cfg = {**cfg, **{k: source[k] for k in G_ARCH_KEYS}, **{k: cfg[k] or source[k] for k in ADDABLE_KEYS}}
        check_config(cfg)
        if cfg["AB_CLASSES"] and cfg["ENCODER"] == "unet":
            raise UserError(f"{cfg['INIT']}: --ab-classes needs a model with a pretrained ENCODER; this one's is unet")
    state = build_state(cfg, device)
    if not ckpt:
        start_generator(state, cfg, init, log)
    if rank == 0:
        remove_stale_temporaries(os.path.dirname(ckpt_path), log)
    if ckpt:
        resume(state, ckpt, ckpt_path, cfg, rank, device, log, CONSTANTS, ARCH_KEYS)
    return cfg, state


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
    log = (lambda msg: tqdm.write(display_name(msg))) if master else (lambda msg: None)  # names in it escaped
    torch.manual_seed(cfg["SEED"] + rank)
    dataset, weights, sample_rgb, batch_size, steps_per_epoch, total_steps = training_data(cfg, world, log)
    cfg, state = start_state(cfg, ckpt_path, fresh, rank, device, log)
    vgg, perc, amp = build_vgg(cfg, device), build_perceptual(cfg, device), autocast_for(device, cfg)
    classes = build_class_loss(cfg, state.netG, device)
    if state.batch_in_epoch >= steps_per_epoch:  # the data set shrank since the checkpoint
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    csv_log = CSVLog(os.path.join(run_dir, "log.csv"), state.step, enabled=master)
    if state.step >= total_steps:
        log(f"nothing to do: {ckpt_path} is at step {state.step} of {total_steps} (raise --steps or --epochs)")
        return state.step
    loader = make_loader(dataset, weights, batch_size, state, cfg, rank, world, device)
    nets = wrap_for_processes(state, cfg, world, device)
    log(f"training on {world} x {describe_device(device, cfg)}: {len(dataset)} images, batch "
        f"{batch_size} x {world}, {steps_per_epoch} steps/epoch, steps {state.step} -> {total_steps}, run dir {run_dir}")

    def save():
        if master:
            save_run(state, ckpt_path, cfg, device)

    bad_in_row = 0
    with stop_signals(log) as stop, tqdm(total=total_steps, initial=state.step, desc="train", dynamic_ncols=True,
                                         disable=not master) as pbar:
        t_data = time.time()
        for batch in loader:
            data_wait = time.time() - t_data
            if getattr(state.netG, "encoder_frozen", False) and state.step >= cfg["FREEZE_STEPS"]:
                nets = wrap_for_processes(state, cfg, world, device)
                log(f"step {state.step}: the encoder trains from now on, at {cfg['ENCODER_LR_MULT']} x LR_G")
            ok, losses = step(state, batch, cfg, amp, nets, vgg, perc, steps_per_epoch, classes)
            bad_in_row = 0 if ok else bad_in_row + 1
            if not ok:
                warn_skipped(state, bad_in_row, cfg, ckpt_path, log)
                t_data = time.time()
                continue
            values = losses.cpu()
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


def save_run(state, ckpt_path, cfg, device):
    """Write the run's checkpoint; when that fails, the previous one is kept and the error says so."""
    try:
        state.save(ckpt_path, cfg, rng_state(device))
    except UserError as e:
        raise UserError(f"{e}; the previous checkpoint is kept") from None


def warn_skipped(state, bad_in_row, cfg, ckpt_path, log):
    """Log a skipped non-finite step; stop after MAX_BAD_STEPS of them in a row."""
    log(f"warning: non-finite loss or gradient at step {state.step}; step skipped "
        f"({bad_in_row} in a row, {state.bad_steps} in all)")
    if bad_in_row >= cfg["MAX_BAD_STEPS"]:
        raise UserError(f"{bad_in_row} steps in a row had a non-finite loss or gradient; stopping. "
                        f"The last good checkpoint is {ckpt_path}; try lower learning rates or --amp off")


# -----------------------------------------------------------------------------

def hints_argument(args):
    """The number of hints --eval reveals per photo (--hints N); 0 without --hints and for --infer,
    whose --hints FILE colorize_files reads. UserError when --hints does not fit the mode."""
    if args.hints is None:
        return 0
    if not (args.infer or args.eval):
        raise UserError("--hints is for --infer (a hints file) and --eval (a number of hints)")
    if args.eval:
        if not re.fullmatch(r"[0-9]+", args.hints):
            raise UserError(f"--hints with --eval must be a whole number of hints per photo, got {args.hints!r}")
        return int(args.hints)
    return 0


def parse_args(argv=None):
    """The command line parsed; everything after the first "--" is an --infer path, even one that starts
    with "-" (argparse would take it for an option, and has nowhere to put it after "--")."""
    argv = sys.argv[1:] if argv is None else list(argv)
    head, paths = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = build_parser()
    args = parser.parse_args(head)
    if args.infer is None and paths:
        parser.error(f"the paths after -- ({' '.join(map(display_name, paths))}) are for --infer")
    if args.infer is not None:
        args.infer += paths
        if not args.infer:
            parser.error("argument --infer: expected at least one PATH")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = make_config(args)
        n_hints = hints_argument(args)
        if torch is None and (args.train or args.export or args.eval):
            raise UserError(f"{'--train' if args.train else '--export' if args.export else '--eval'} needs PyTorch, "
                            f"which is not installed (pip install -r requirements.txt); without it, --infer and "
                            f"--serve colorize with ONNX models on onnxruntime")
        if args.video and not (args.infer or args.eval) or args.video and (n_hints or args.hints):
            raise UserError("--video is for --infer or --eval (without --hints: a clip's hints are FOLDER.hints.json "
                            "beside it): folders of one clip's frames")
        if args.reference is not None and (args.video or not (args.infer or args.eval)):
            raise UserError("--reference is for photos with --infer or --eval (not yet for films)")
        threads = backends.set_threads(cfg)
        if args.train:
            train(cfg, fresh=args.fresh)
            return 0
        if args.export is not None:
            if not args.export.strip():
                raise UserError(f"--export needs a file name (model.pt or model.onnx), got {args.export!r}")
            write = export_onnx if args.export.lower().endswith(".onnx") else export
            step = write(cfg["WEIGHTS"], os.path.abspath(args.export), args.about, annealed_t=args.ANNEALED_T)
            print(f"wrote {display_name(os.path.abspath(args.export))} ({os.path.getsize(args.export) / 1e6:.1f} MB, step {step})")
            return 0
        colorizer = Colorizer.load(cfg["WEIGHTS"], cfg["DEVICE"], cfg["RENDER_SIZE"], cfg["MAX_PIXELS"], cfg["SATURATION"],
                                   cfg["BACKEND"], threads, cfg["HINT_SPREAD"])
        if args.serve:
            from webapp import serve  # Gradio is an optional dependency
            serve(colorizer, args.host, args.port)
            return 0
        with sigterm_as_interrupt():
            if args.infer and args.video:
                return 1 if video.colorize_frame_folders(colorizer, args.infer, cfg["OUT_DIR"], cfg["TEMPORAL"],
                                                         cfg["FRAME_RATE"]) else 0
            if args.infer:
                return 1 if colorize_files(colorizer, args.infer, cfg["OUT_DIR"], args.debug, args.hints,
                                           cfg["TEMPORAL"], args.reference) else 0
            out_dir = cfg["OUT_DIR"] if args.OUT_DIR is not None else cfg["EVAL_DIR"]
            if args.video:
                return evaluate_video(colorizer, args.eval, out_dir, cfg["TEMPORAL"], args.debug)
            return 1 if evaluate(colorizer, args.eval, out_dir, cfg["EVAL_SIZE"], cfg["NUM_SAMPLES"], args.debug,
                                 n_hints, args.reference) else 0
    except KeyboardInterrupt:
        return 130
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {display_name(str(e))}", file=sys.stderr)  # the names in it, escaped
        return 2


class _Stream(io.TextIOBase):
    """stdout or stderr that cannot end the work: when writing fails (closed, a full disk, a pipe whose
    reader left), the text is dropped and the first error kept; the photos are written all the same."""

    def __init__(self, stream):
        self.stream, self.error = stream, None

    def write(self, text):
        if self.stream is None:  # closed when Python started (`>&-`): sys.stdout is None
            self.error = self.error or ValueError("closed")
        elif self.error is None:
            try:
                self.stream.write(text)
                self.stream.flush()  # now, not at exit, where a failure could no longer be handled
            except (OSError, ValueError) as e:  # ValueError: the stream was closed
                self.error = e
        return len(text)

    def isatty(self):
        return self.error is None and self.stream is not None and self.stream.isatty()


def cli():
    """main() as a command: a closed or full stdout or stderr (`> /dev/full`, `>&-`, `2>&-`) costs the
    report, never the outputs and never a traceback. When the report could not be written, the exit
    code is at least 1 and stderr (if it still works) says why."""
    out, err = _Stream(sys.stdout), _Stream(sys.stderr)
    sys.stdout, sys.stderr = out, err
    code = main()
    if out.error is not None:
        why = describe_os_error(out.error) if isinstance(out.error, OSError) else "it is closed"
        print(f"error: could not print the report to standard output ({why}); the outputs were written", file=err)
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(cli())
