"""Shared test helpers: generated good and bad input files, and a tiny training config.

make_good_inputs / make_bad_inputs write every awkward kind of file the tool must handle, so
the same fixtures can be run through --infer, --eval and training data scans.
"""
import importlib
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Tiny networks gain nothing from threads, and on a busy two-core machine competing threads make a
# step 50x slower. Subprocesses started by the tests inherit the variable.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

# Pass this as --max-pixels (load_image's max_pixels) with the fixtures below: every good
# file is under it, and bad/over_limit.png (80x80 = 6400 pixels) is over it.
TEST_MAX_PIXELS = 5000

# The tiny network every test trains: seconds on two CPU cores.
TINY_ARGS = ["--ngf", "8", "--ndf", "8", "--n-downs", "3", "--size", "32", "--batch-size", "2",
             "--num-workers", "0", "--num-d", "2", "--attn-factors", "4", "--val-dir", "",
             "--num-samples", "2", "--log-every", "1", "--max-pixels", str(TEST_MAX_PIXELS)]


def photo(w, h, seed=0):
    """A colourful smooth (h, w, 3) uint8 image: gradients plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    rgb = np.stack([np.sin(x / max(w, 2) * 3 + y / max(h, 2) * 2 + p) for p in phase], axis=2) * 100 + 128
    rgb += rng.normal(0, 8, rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_photos(folder, n=6, size=(40, 40)):
    """n colourful photos of size (w, h) in folder, as PNGs; returns the folder as a string."""
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(photo(*size, seed=i)).save(os.path.join(folder, f"p{i}.png"))
    return str(folder)


def train_args(data, run_dir, steps, *extra):
    """Command-line arguments for a tiny CPU training run."""
    return ["--train", *TINY_ARGS, "--data", str(data), "--run-dir", str(run_dir), "--steps", str(steps),
            "--device", "cpu", *extra]


def tiny_cfg(data, run_dir, steps, *extra):
    """The config dict that train_args would give, for calling colorize_base.train() in-process."""
    import colorize_base as cb
    return cb.make_config(cb.build_parser().parse_args(train_args(data, run_dir, steps, *extra)))


def saved_step(run_dir):
    from checkpoint import load_checkpoint
    return load_checkpoint(os.path.join(run_dir, "checkpoint.pt"))["step"]


def run_cli(*args, timeout=300, **popen_args):
    """The real command line, `python colorize_base.py ARGS`, in a subprocess: a CompletedProcess
    with text stdout and stderr."""
    return subprocess.run([sys.executable, os.path.join(REPO, "colorize_base.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, **popen_args)


def tiny_checkpoint(path, zero_output=False, **constants):
    """An untrained tiny generator saved like an exported model: enough to exercise --infer and
    --eval. zero_output: the last convolution gives 0, so ab = tanh(0) = 0 (exactly the gray image)."""
    import colorize_base as cb
    from checkpoint import FORMAT_VERSION, save_checkpoint
    from models import build_generator
    cfg = {**cb.CONSTANTS, "NGF": 8, "N_DOWNS": 3, "ATTN_FACTORS": (4,), **constants}
    torch.manual_seed(0)
    netG = build_generator(cfg)
    if zero_output:
        last = netG.up[-1][2]
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.zeros_(last.bias)
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "step": 0, "netG_ema": netG.state_dict()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def weights(tmp_path_factory):
    """A tiny untrained generator file, shared by the tests that only need some model."""
    return tiny_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt")


def write_png16(path, rgb16):
    """A 16-bit-per-channel RGB PNG, written by hand: Pillow can read these but not write them."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb16)  # filter 0 per row

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _save(folder, name, img, **kw):
    path = os.path.join(folder, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)
    return path


def make_good_inputs(folder):
    """Write files that must colorize. Returns {relative path: (width, height, has_alpha)}: the size
    and alpha the output must have (the size as displayed, i.e. after the EXIF rotation)."""
    made = {}
    _save(folder, "plain.jpg", Image.fromarray(photo(40, 32, 1)), quality=95)
    made["plain.jpg"] = (40, 32, False)
    _save(folder, "cmyk.jpg", Image.fromarray(photo(36, 28, 2)).convert("CMYK"))
    made["cmyk.jpg"] = (36, 28, False)
    gray16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    _save(folder, "gray16.png", Image.fromarray(gray16))
    made["gray16.png"] = (40, 30, False)
    write_png16(os.path.join(folder, "rgb16.png"), photo(36, 30, 13).astype(np.uint16) * 257)
    made["rgb16.png"] = (36, 30, False)
    pal = Image.fromarray(photo(30, 30, 3)).quantize(16)
    _save(folder, "palette_transparent.png", pal, transparency=0)
    made["palette_transparent.png"] = (30, 30, True)
    la = Image.merge("LA", [Image.fromarray(photo(32, 24, 4)[..., 0]), Image.new("L", (32, 24), 128)])
    _save(folder, "gray_alpha_la.png", la)
    made["gray_alpha_la.png"] = (32, 24, True)
    frames = [Image.fromarray(photo(34, 26, s)).quantize(64) for s in (5, 6, 7)]
    _save(folder, "animated.gif", frames[0], save_all=True, append_images=frames[1:], duration=100, loop=0)
    made["animated.gif"] = (34, 26, False)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    _save(folder, "exif_rotated.jpg", Image.fromarray(photo(48, 24, 8)), exif=exif)
    made["exif_rotated.jpg"] = (24, 48, False)
    _save(folder, "one_pixel_wide.png", Image.fromarray(photo(1, 40, 9)))
    made["one_pixel_wide.png"] = (1, 40, False)
    _save(folder, "sub folder/fötö ñandú 1.jpg", Image.fromarray(photo(40, 40, 10)))
    made["sub folder/fötö ñandú 1.jpg"] = (40, 40, False)
    # the same name in two folders: outputs must not overwrite each other
    _save(folder, "a/same.jpg", Image.fromarray(photo(32, 32, 11)))
    made["a/same.jpg"] = (32, 32, False)
    _save(folder, "b/same.jpg", Image.fromarray(photo(48, 32, 12)))
    made["b/same.jpg"] = (48, 32, False)
    return made


def make_bad_inputs(folder):
    """Write files that must be refused. Returns {relative path: substring of the expected reason}.
    Use with max_pixels = TEST_MAX_PIXELS (over_limit.png is bad only because of that limit)."""
    os.makedirs(folder, exist_ok=True)
    made = {}
    open(os.path.join(folder, "empty.jpg"), "wb").close()
    made["empty.jpg"] = "empty"
    buf = io.BytesIO()
    Image.fromarray(photo(64, 64, 20)).save(buf, "JPEG", quality=95)
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    made["truncated.jpg"] = "truncated"
    with open(os.path.join(folder, "text.jpg"), "w") as f:
        f.write("this is a text file, not a photo\n")
    made["text.jpg"] = "not an image"
    _save(folder, "over_limit.png", Image.fromarray(photo(80, 80, 21)))
    made["over_limit.png"] = f"limit of {TEST_MAX_PIXELS}"
    return made


@pytest.fixture
def good_inputs(tmp_path):
    folder = tmp_path / "good"
    return folder, make_good_inputs(str(folder))


@pytest.fixture
def bad_inputs(tmp_path):
    folder = tmp_path / "bad"
    return folder, make_bad_inputs(str(folder))


# -----------------------------------------------------------------------------
# Browser tests (the Gradio page, the static page) drive the system Chromium through Selenium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser_or_skip(test, modules, how, also=None):
    """Skip a browser test that cannot run here, saying why and how to make it run; under CI=true,
    where it must run, fail instead. modules: the Python packages it needs; also: a function giving
    one more reason (with its own remedy) or None."""
    why = None
    for name in ("selenium", *modules):
        try:
            importlib.import_module(name)
        except ImportError:
            why = why or f"{name} is not installed; to run it: {how}"
    if why is None and not (CHROMIUM and CHROMEDRIVER):
        why = f"chromium and chromium-driver are not installed; to run it: {how}"
    why = why or (also() if also else None)
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the {test} must run in CI, but {why}")
        pytest.skip(f"{test}: {why}")
