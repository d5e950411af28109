"""Photos -> training batches: the scan of a training set, the dataset of random crops, the
augmentations (mosaics, exposure, simulated colour hints), the photos of a run and its held-out
set. Decoding and Lab conversion are images.py's; here they run batched on the training device.
"""
import collections
import math
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from files import UserError, display_name
from hints import HINT_CHANNELS, MAX_TRAIN_HINTS, paint_hints
from images import (BadImageError, find_images, is_grayscale, lab_to_net, linear_to_srgb, load_image, rgb_to_lab,
                    srgb_to_linear)


def scan_images(paths, max_pixels, log=print):
    """Check every training image once: returns (colour files, n_bad, n_gray), warning once per bad
    file and per folder that cannot be read (each counted in n_bad)."""
    good, n_gray, unreadable = [], 0, []
    files = find_images(paths, unreadable)
    for folder, why in unreadable:
        log(f"warning: skipping the folder {display_name(folder)}: cannot read it ({why}); the photos in it are not used")
    n_bad = len(unreadable)
    for path in tqdm(files, desc="checking images", unit="img", leave=False, dynamic_ncols=True):
        try:
            rgb, _ = load_image(path, max_pixels)
        except BadImageError as e:
            log(f"warning: skipping {display_name(str(e))}")
            n_bad += 1
            continue
        if is_grayscale(rgb):
            n_gray += 1
        else:
            good.append(path)
    return good, n_bad, n_gray


# -----------------------------------------------------------------------------
# Dataset

class ColorizationDataset(Dataset):
    """Colour photos -> random crops as uint8 RGB tensors (3, size, size).

    Lab conversion happens later, batched on the training device. A file that became
    unreadable after the scan is replaced by the next one, with a warning.
    """

    def __init__(self, files, size, train=True, max_pixels=100_000_000):
        if not files:
            raise ValueError("no usable colour images to train on")
        self.files, self.size, self.max_pixels = list(files), size, max_pixels
        if train:
            self.transform = v2.Compose([
                v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ])
        else:  # fixed view for samples and validation
            self.transform = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        for k in range(len(self.files)):
            path = self.files[(i + k) % len(self.files)]
            try:
                rgb, _ = load_image(path, self.max_pixels, say_frames=False)  # scan_images said it once
                break
            except BadImageError as e:
                warnings.warn(f"skipping {display_name(str(e))}", stacklevel=2)
        else:
            raise RuntimeError("every training image failed to load")
        img = torch.from_numpy(np.round(rgb * 255).astype(np.uint8)).permute(2, 0, 1)
        return self.transform(img)


def mosaic(rgb, share, generator=None):
    """Replace about share of a float RGB batch (B, 3, H, W) by 2x2 mosaics of four of its images,
    each shrunk to half size (2x2 means): image i keeps the top-left tile, the others come from
    images i+1, i+2, i+3 of the batch (cyclically). Small photos cropped to the training size show
    one subject filling the frame; a mosaic shows subjects at half that scale, as a whole scene
    rendered for inference does. H and W must be even."""
    B, _, H, W = rgb.shape
    pick = torch.rand(B, generator=generator) < share
    if not pick.any():
        return rgb
    if H % 2 or W % 2:
        raise ValueError(f"mosaic needs an even image size, got {H}x{W}")
    small = torch.nn.functional.avg_pool2d(rgb, 2)
    idx = pick.nonzero()[:, 0].to(rgb.device)
    tiles = [small[(idx + k) % B] for k in range(4)]
    out = rgb.clone()
    out[idx] = torch.cat([torch.cat(tiles[:2], dim=3), torch.cat(tiles[2:], dim=3)], dim=2)
    return out


def expose(rgb, stops, generator=None):
    """Change each image's exposure of a float sRGB batch (B, 3, H, W) by a factor 2**u, u drawn
    uniformly in [-stops, stops], in linear light, and clip, as a camera would. A white thing in
    shade then looks as light as a brown one in the sun: the network has to tell them apart by
    something other than how light they are. Neutral colours stay neutral."""
    u = (torch.rand(rgb.shape[0], generator=generator) * 2 - 1) * stops
    gain = (2.0 ** u).to(rgb.device, rgb.dtype).view(-1, 1, 1, 1)
    return linear_to_srgb(srgb_to_linear(rgb) * gain).clamp(0, 1)


def simulate_hints(real_B, share=0.5, geom_p=0.125, max_side=9, colour_bias=0.5):
    """Hints as a user might give them, drawn from the true ab (B, 2, H, W) of a training batch ->
    (B, 3, H, W). An image gets hints with probability share (else none: the automatic task); then a
    geometric number of them (1, 2, ... with mean 1/geom_p, at most MAX_TRAIN_HINTS), each a square of
    1..max_side px carrying the mean true ab of that square. A hint is centred, with probability
    colour_bias, on a pixel drawn by its chroma (people hint coloured things), else anywhere."""
    B, _, H, W = real_B.shape
    planes = real_B.new_zeros(B, HINT_CHANNELS, H, W)
    geometric = (torch.log(1 - torch.rand(B)) / math.log(1 - geom_p)).floor().long() + 1  # 1, 2, ...
    counts = torch.where(torch.rand(B) < share, geometric.clamp(max=MAX_TRAIN_HINTS), 0)
    n = int(counts.sum())
    if n == 0:
        return planes
    img = torch.repeat_interleave(torch.arange(B), counts)               # image of each hint
    rank = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[img]     # its number within the image
    chroma = real_B.float().norm(dim=1).flatten(1) + 1e-3                 # (B, H*W), never all zero
    by_colour = torch.multinomial(chroma, int(counts.max()), replacement=True).cpu()[img, rank]
    centre = torch.where(torch.rand(n) < colour_bias, by_colour, torch.randint(H * W, (n,)))
    side = torch.randint(1, max_side + 1, (n,))
    y0 = (centre // W - (side - 1) // 2).clamp(min=0)
    x0 = (centre % W - (side - 1) // 2).clamp(min=0)
    y1, x1 = (y0 + side).clamp(max=H), (x0 + side).clamp(max=W)
    # the mean true ab of each square, from the integral image (float64: exact enough at any size)
    integral = F.pad(real_B.double().cumsum(2).cumsum(3), (1, 0, 1, 0))   # (B, 2, H + 1, W + 1)
    i, a0, a1, b0, b1 = (t.to(real_B.device) for t in (img, y0, y1, x0, x1))
    sums = integral[i, :, a1, b1] - integral[i, :, a0, b1] - integral[i, :, a1, b0] + integral[i, :, a0, b0]
    means = (sums / ((a1 - a0) * (b1 - b0))[:, None]).tolist()           # n x (a, b)
    return paint_hints(planes, [(i, slice(r0, r1), slice(c0, c1), a, b) for i, r0, r1, c0, c1, (a, b)
                                in zip(img.tolist(), y0.tolist(), y1.tolist(), x0.tolist(), x1.tolist(), means)])


def to_net_input(batch_uint8, device, mosaic_share=0.0, exposure=0.0, saturation=1.0):
    """uint8 RGB batch (B, 3, H, W) -> (real_A, real_B) on device, in network scaling; with
    mosaic_share, that share of the images become mosaics of four (see mosaic); with exposure,
    each image's exposure changes by up to that many stops (see expose); with saturation, the true
    ab is multiplied by it (clipped to the ab range): a more vivid target, while gray stays gray."""
    rgb = batch_uint8.to(device, non_blocking=True).float() / 255
    if exposure:
        rgb = expose(rgb, exposure)
    if mosaic_share:
        rgb = mosaic(rgb, mosaic_share)
    real_A, real_B = lab_to_net(rgb_to_lab(rgb))
    return real_A, real_B if saturation == 1 else (real_B * saturation).clamp(-1, 1)


# -----------------------------------------------------------------------------
# The photos of a training run

def split_files(cfg, log):
    """Colour photos to train on, and the fixed held-out ones for the sample grids."""
    try:
        train_files, n_bad, n_gray = scan_images(cfg["DATA_DIR"].split(","), cfg["MAX_PIXELS"], log)
    except FileNotFoundError as e:
        raise UserError(f"--data: {e}") from None
    log(f"data: {len(train_files)} colour images, {n_gray} grayscale left out, {n_bad} unreadable skipped")
    if cfg["VAL_DIR"] and not os.path.lexists(cfg["VAL_DIR"]):  # a typo must not quietly hold out training photos
        raise UserError(f"--val-dir {display_name(cfg['VAL_DIR'])}: no such folder or file (pass --val-dir \"\" "
                        f"to hold out {cfg['NUM_SAMPLES']} of the training photos instead)")
    if cfg["VAL_DIR"]:
        val_files, _, _ = scan_images([cfg["VAL_DIR"]], cfg["MAX_PIXELS"], log)
        if not val_files:
            raise UserError(f"--val-dir {cfg['VAL_DIR']}: no usable colour images (pass --val-dir \"\" to hold "
                            f"out some training images instead)")
    else:  # hold out an evenly spaced few, only what the photos can spare: at most a tenth of them
        n, n_hold = len(train_files), min(cfg["NUM_SAMPLES"], len(train_files) // 10)
        if n_hold:
            val_files = train_files[::n // n_hold][:n_hold]
            held = set(val_files)
            train_files = [f for f in train_files if f not in held]
            log(f"sample grids: {n_hold} of the {n} photos held out, {len(train_files)} trained on (at most a "
                f"tenth is held out; --val-dir FOLDER shows other photos instead)")
        else:  # too few to spare one: the grids show photos the model trains on
            val_files = train_files
            log(f"sample grids: {min(n, cfg['NUM_SAMPLES'])} of the {n} training photos, none held out (too few "
                f"to spare any; --val-dir FOLDER shows other photos instead)")
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




def pad_to_multiple(x, m, mode="replicate"):
    """Pad (B, C, h, w) on the bottom and right to the next multiple of m, repeating the edge (L) or
    with zeros (mode="constant", for hints); the output is cropped back with [..., :h, :w]."""
    return F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m), mode=mode)
