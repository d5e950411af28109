"""Files -> tensors: image discovery and loading, the training dataset, and Lab conversion.

Colour conversion is done in torch on whole batches so it runs on the training
device; it follows scikit-image's rgb2lab / lab2rgb (sRGB, D65, 2 degree observer).
"""
import collections
import fnmatch
import glob
import os
import stat
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm import tqdm

from files import UserError, describe_os_error

IMG_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


class BadImageError(ValueError):
    """An input file that cannot be used as an image; the message names the file and the reason."""


# -----------------------------------------------------------------------------
# RGB <-> Lab, batched, (B, 3, H, W) float tensors; RGB in [0, 1]

_XYZ_FROM_RGB = torch.tensor([[0.412453, 0.357580, 0.180423],
                              [0.212671, 0.715160, 0.072169],
                              [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_RGB_FROM_XYZ = torch.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _channel_matmul(m, x):
    # (3, 3) @ (B, 3, H, W) over the channel axis
    return torch.einsum("ij,bjhw->bihw", m.to(x.dtype).to(x.device), x)


def srgb_to_linear(rgb):
    """sRGB in [0, 1] -> linear light (the sRGB transfer curve undone)."""
    return torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin):
    """Linear light -> sRGB (not clipped)."""
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=1e-12) ** (1 / 2.4) - 0.055, 12.92 * lin)


def rgb_to_lab(rgb):
    """sRGB in [0, 1] (B, 3, H, W) -> Lab with L in [0, 100], a and b roughly in [-110, 110]."""
    xyz = _channel_matmul(_XYZ_FROM_RGB, srgb_to_linear(rgb.clamp(0, 1)))
    xyz = xyz / torch.tensor(_WHITE_D65, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp(min=1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=1)


def lab_to_rgb(lab):
    """Lab (B, 3, H, W) -> sRGB in [0, 1], clipped like scikit-image's lab2rgb."""
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    fy = (L + 16) / 116
    f = torch.stack([a / 500 + fy, fy, (fy - b / 200).clamp(min=0)], dim=1)
    xyz = torch.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * torch.tensor(_WHITE_D65, dtype=lab.dtype, device=lab.device).view(1, 3, 1, 1)
    return linear_to_srgb(_channel_matmul(_RGB_FROM_XYZ, xyz)).clamp(0, 1)


# The network sees L in [-1, 1] and predicts ab in [-1, 1]: the only place the scaling lives.
AB_SCALE = 110.0


def lab_to_net(lab):
    """Lab (B, 3, H, W) -> (real_A, real_B): L/50 - 1 (B, 1, H, W) and ab/110 (B, 2, H, W)."""
    return lab[:, :1] / 50 - 1, lab[:, 1:] / AB_SCALE


def net_to_lab(real_A, fake_B):
    """Inverse of lab_to_net; predicted ab is clamped to the valid range first."""
    return torch.cat([(real_A + 1) * 50, fake_B.clamp(-1, 1) * AB_SCALE], dim=1)


# -----------------------------------------------------------------------------
# Files

def is_image_file(path):
    return os.path.splitext(path)[1].lower() in IMG_EXTENSIONS


def find_images(paths, unreadable=None):
    """Expand files, folders (recursive) and glob patterns into a sorted list of image paths, each
    real file once however many names (symlinks, overlapping patterns) lead to it.

    A path that matches nothing raises FileNotFoundError naming it. A named path that is not a
    regular file (a FIFO, socket or device) is kept, so that loading it names it as such. A folder
    that cannot be read (permission denied, a path too long) is appended to unreadable as
    (folder, reason) and the others are still searched; without that list it raises UserError.
    """
    bad = [] if unreadable is None else unreadable
    found = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            for root, files in walk_files(p, bad):  # symlinked folders are not followed: no loops
                found += [os.path.join(root, f) for f in files if is_image_file(f)]
        elif os.path.lexists(p):
            found.append(p)  # named explicitly: let loading say if it is not an image
        else:
            n_bad = len(bad)
            matches = _glob_recursive(p, bad) if "**" in p else glob.glob(p)
            matches = [m for m in matches if not os.path.isdir(m)]
            if not matches and len(bad) == n_bad:
                raise FileNotFoundError(f"no such file, folder or pattern: {p}")
            found += matches
    if unreadable is None and bad:
        folder, why = bad[0]
        raise UserError(f"{folder}: cannot read this folder ({why})")
    return unique_files(found)


def walk_files(top, unreadable, followlinks=False):
    """(folder, names of its non-folder entries) for top and every folder under it, at any depth
    (a loop, not recursion: os.walk overflows the stack 1,000 folders deep). A folder that cannot
    be read is appended to unreadable as (folder, reason). With followlinks, symlinked folders are
    entered too, each real folder once, so that link loops end."""
    stack, seen = [top], set()
    while stack:
        root = stack.pop()
        try:
            if followlinks:
                st = os.stat(root)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            with os.scandir(root) as it:
                entries = list(it)
        except OSError as e:
            unreadable.append((root, describe_os_error(e)))
            continue
        files, dirs = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # as os.walk: a link to a folder is a folder, entered only with followlinks
                enter = is_dir and (followlinks or not entry.is_symlink())
            except OSError:
                is_dir = enter = False
            if enter:
                dirs.append(entry.path)
            elif not is_dir:
                files.append(entry.name)
        yield root, files
        stack += sorted(dirs, reverse=True)


def unique_files(paths):
    """Sorted paths, one per real file: of several names for the same file, the first in sort order."""
    unique = {}
    for f in sorted(set(paths)):
        unique.setdefault(os.path.realpath(f), f)
    return sorted(unique.values())


def _glob_recursive(pattern, unreadable):
    """glob.glob(pattern, recursive=True), except that each real folder is entered once, so
    symlink loops end instead of descending until the path is too long, and a folder that cannot
    be read is appended to unreadable."""
    parts = pattern.split(os.sep)
    k = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = os.sep.join(parts[:k]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    if not os.path.isdir(base):
        return []
    found = []
    for root, files in walk_files(base, unreadable, followlinks=True):
        for f in files:
            path = os.path.join(root, f)
            if _match_parts(os.path.relpath(path, base).split(os.sep), parts[k:]):
                found.append(path if parts[:k] else os.path.relpath(path))
    return found


def _match_parts(names, patterns):
    """fnmatch over path components, where a "**" component matches any number of them. A loop
    over the patterns, not recursion, so that any depth of folders matches."""
    ends = {0}  # how many names the patterns so far can consume
    for pattern in patterns:
        if pattern == "**":
            ends = set(range(min(ends), len(names) + 1)) if ends else set()
        else:
            ends = {i + 1 for i in ends if i < len(names) and fnmatch.fnmatchcase(names[i], pattern)}
    return len(names) in ends


def open_image(path, max_pixels=100_000_000):
    """Open an image file as a decoded PIL image as displayed: EXIF orientation applied, the first
    frame of an animation. Raises BadImageError naming the file, with a plain reason; never blocks
    on a FIFO or device."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise BadImageError(f"{path}: file does not exist") from None
    except OSError as e:
        raise BadImageError(f"{path}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise BadImageError(f"{path}: is a folder, not an image file")
    if not stat.S_ISREG(mode):
        raise BadImageError(f"{path}: not a regular file (a pipe, socket or device), so not read")
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise BadImageError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                f"(raise --max-pixels if you trust this file)")
        img.seek(0)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a huge photo
        return img
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{path}: file does not exist") from None
    except Image.DecompressionBombError:  # Pillow's own guard, which fires before ours above its limit
        raise BadImageError(f"{path}: refused as a possible decompression bomb: over Pillow's limit of "
                            f"{2 * Image.MAX_IMAGE_PIXELS} pixels (--max-pixels is {max_pixels})") from None
    except Exception as e:  # decoders of damaged files raise all sorts (OSError, SyntaxError, struct.error...)
        raise BadImageError(f"{path}: {_plain_reason(path, e)}") from None


def integer_scale(img):
    """What white is in an integer grayscale image: 65535 for 16-bit, and for 32-bit ("I") 65535
    when any value exceeds 255, else 255. Decided on the whole image, never on a crop of it."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.getextrema()[1] > 255):
        return 65535.0
    return 255.0


def image_to_array(img, scale=None):
    """A PIL image (or a crop of one) as float RGB in [0, 1], shape (H, W, 3), plus alpha (H, W) or None.
    16-bit, palette, CMYK, LA/RGBA and grayscale images are handled; 16-bit keeps its precision.
    scale: integer_scale() of the whole image when img is a crop of an integer image."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the extra precision
        gray = np.clip(np.asarray(img, dtype=np.float32) / (scale or integer_scale(img)), 0, 1)
        return np.repeat(gray[..., None], 3, axis=2), None
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0, 1)
        return np.repeat(gray[..., None], 3, axis=2), None
    alpha = None
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        alpha = np.asarray(img, dtype=np.float32)[..., 3] / 255
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    rgb /= 255
    return rgb, alpha


def load_image(path, max_pixels=100_000_000):
    """Read any common image file as float RGB in [0, 1], shape (H, W, 3), plus alpha (H, W) or None.

    EXIF orientation is applied; 16-bit, palette, CMYK, LA/RGBA and grayscale inputs are handled;
    an animated file gives its first frame; any size from 1x1 up to max_pixels is accepted.
    Raises BadImageError naming the file, with a plain reason.
    """
    with open_image(path, max_pixels) as img:
        try:
            return image_to_array(img)
        except Exception as e:
            raise BadImageError(f"{path}: {_plain_reason(path, e)}") from None


def _plain_reason(path, error):
    """What went wrong reading an image file, in words a user can act on."""
    if os.path.isdir(path):
        return "is a folder, not an image file"
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "file is empty (0 bytes)"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not an image file (or a format this tool cannot read)"
    if "truncated" in str(error) or isinstance(error, EOFError):
        return "file is truncated or damaged (the image data ends early)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, MemoryError):
        return "too large to decode in the memory available (lower --max-pixels)"
    return f"not a readable image ({error})"


def is_grayscale(rgb, tol=2 / 255):
    """True when an (H, W, 3) float image has (almost) no colour: every channel equals the others."""
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) < tol


def scan_images(paths, max_pixels, log=print):
    """Check every training image once: returns (colour files, n_bad, n_gray), warning once per bad
    file and per folder that cannot be read (each counted in n_bad)."""
    good, n_gray, unreadable = [], 0, []
    files = find_images(paths, unreadable)
    for folder, why in unreadable:
        log(f"warning: skipping the folder {folder}: cannot read it ({why}); the photos in it are not used")
    n_bad = len(unreadable)
    for path in tqdm(files, desc="checking images", unit="img", leave=False, dynamic_ncols=True):
        try:
            rgb, _ = load_image(path, max_pixels)
        except BadImageError as e:
            log(f"warning: skipping {e}")
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
                rgb, _ = load_image(path, self.max_pixels)
                break
            except BadImageError as e:
                warnings.warn(f"skipping {e}", stacklevel=2)
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


def to_net_input(batch_uint8, device, mosaic_share=0.0, exposure=0.0):
    """uint8 RGB batch (B, 3, H, W) -> (real_A, real_B) on device, in network scaling; with
    mosaic_share, that share of the images become mosaics of four (see mosaic); with exposure,
    each image's exposure changes by up to that many stops (see expose)."""
    rgb = batch_uint8.to(device, non_blocking=True).float() / 255
    if exposure:
        rgb = expose(rgb, exposure)
    if mosaic_share:
        rgb = mosaic(rgb, mosaic_share)
    return lab_to_net(rgb_to_lab(rgb))


# -----------------------------------------------------------------------------
# The photos of a training run

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


# -----------------------------------------------------------------------------
# The gray version of a photo

def to_8bit(rgb):
    """Round float RGB to what an 8-bit file stores, so scores match the PNGs --infer writes."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.float32) / 255


def without_colour(rgb):
    """sRGB (B, 3, H, W) in [0, 1] -> the same lightness with Lab a = b = 0: the photo in gray."""
    lab = rgb_to_lab(rgb)
    lab[:, 1:] = 0
    return lab_to_rgb(lab)


def gray_version(rgb):
    """A photo (H, W, 3) float in [0, 1] without its colour, as an 8-bit image with R = G = B: the
    input a user of --infer would have, and the gray baseline of --eval."""
    gray = without_colour(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0].mean(0)  # channels differ by rounding only
    return to_8bit(gray[..., None].expand(-1, -1, 3).numpy())


# -----------------------------------------------------------------------------
# Photo <-> render: the network sees a photo at render size, padded to its multiple

def render_shape(H, W, render_size):
    """(h, w) at which the network sees an H x W photo: the longer side render_size, never enlarged."""
    s = min(render_size, max(H, W)) / max(H, W)
    return max(1, round(H * s)), max(1, round(W * s))


def photo_to_render(x, y, W, H, w, h):
    """Pixel (x, y) of a W x H photo -> (row, col) of the h x w render that holds its centre."""
    return min(int((y + 0.5) * h / H), h - 1), min(int((x + 0.5) * w / W), w - 1)


def render_to_photo(r, c, W, H, w, h):
    """Inverse of photo_to_render: the photo pixel (x, y) at the centre of render pixel (r, c)."""
    return int((c + 0.5) * W / w), int((r + 0.5) * H / h)


def pad_to_multiple(x, m, mode="replicate"):
    """Pad (B, C, h, w) on the bottom and right to the next multiple of m, repeating the edge (L) or
    with zeros (mode="constant", for hints); the output is cropped back with [..., :h, :w]."""
    return F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m), mode=mode)
