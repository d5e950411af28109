"""Photos as arrays, without torch: finding and decoding image files, sRGB <-> Lab, the gray
version of a photo, and where a photo's pixels fall in the network's render.

The Lab conversion follows scikit-image's rgb2lab / lab2rgb (sRGB, D65, 2 degree observer) and
runs on numpy arrays (inference, and the torch-free install) and torch tensors (training, whole
batches on the training device) alike: one definition, written with the operations both share.
"""
import fnmatch
import glob
import io
import os
import stat
import sys
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin
from tqdm import tqdm

from files import UserError, describe_os_error, display_name

IMG_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}

# Pillow refuses a PNG whose text chunks (zTXt, iTXt: captions, XMP, editing history) decompress to more
# than 1 MB (MAX_TEXT_CHUNK) or 64 MB in all (MAX_TEXT_MEMORY), the whole file with them. Such files are
# valid and their pixels are all we read, so the limits are raised for this process, to bounds that
# still stop a zip bomb in a text chunk: 64 MB a chunk, 256 MB in all.
PngImagePlugin.MAX_TEXT_CHUNK = max(PngImagePlugin.MAX_TEXT_CHUNK, 64 << 20)
PngImagePlugin.MAX_TEXT_MEMORY = max(PngImagePlugin.MAX_TEXT_MEMORY, 256 << 20)


class BadImageError(ValueError):
    """An input file that cannot be used as an image; the message names the file and the reason."""


# -----------------------------------------------------------------------------
# RGB <-> Lab, batched (B, 3, H, W) float arrays or tensors; RGB in [0, 1]

_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_RGB_FROM_XYZ = np.linalg.inv(_XYZ_FROM_RGB)
_WHITE_D65 = (0.95047, 1.0, 1.08883)


def _namespace(x):
    """numpy for an array, torch for a tensor: the functions below use only what the two share
    (where, clip, einsum, stack, concatenate, asarray)."""
    return np if isinstance(x, np.ndarray) else sys.modules[type(x).__module__.split(".")[0]]


def _constant(values, like):
    """values as an array of like's kind, dtype and device."""
    return _namespace(like).asarray(values, dtype=like.dtype, device=like.device)


def _channel_matmul(m, x):
    # (n, 3) @ (B, 3, H, W) over the channel axis
    return _namespace(x).einsum("ij,bjhw->bihw", _constant(m, x), x)


def srgb_to_linear(rgb):
    """sRGB in [0, 1] -> linear light (the sRGB transfer curve undone)."""
    return _namespace(rgb).where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)


def linear_to_srgb(lin):
    """Linear light -> sRGB (not clipped)."""
    xp = _namespace(lin)
    return xp.where(lin > 0.0031308, 1.055 * xp.clip(lin, 1e-12, None) ** (1 / 2.4) - 0.055, 12.92 * lin)


def rgb_to_lab(rgb):
    """sRGB in [0, 1] (B, 3, H, W) -> Lab with L in [0, 100], a and b roughly in [-110, 110]."""
    xp = _namespace(rgb)
    xyz = _channel_matmul(_XYZ_FROM_RGB, srgb_to_linear(xp.clip(rgb, 0, 1)))
    xyz = xyz / _constant(_WHITE_D65, rgb).reshape(1, 3, 1, 1)
    f = xp.where(xyz > 0.008856, xp.clip(xyz, 1e-12, None) ** (1 / 3), 7.787 * xyz + 16 / 116)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return xp.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], axis=1)


def rgb_to_L(rgb):
    """rgb_to_lab's L alone, (B, 3, H, W) -> (B, 1, H, W) in [0, 100]: only Y counts, so it is half
    the work (what inference needs of the photo: its colour is discarded). lab_to_net takes it as it
    takes a whole Lab."""
    xp = _namespace(rgb)
    y = _channel_matmul(_XYZ_FROM_RGB[1:2], srgb_to_linear(xp.clip(rgb, 0, 1)))  # white's Y is 1
    return 116 * xp.where(y > 0.008856, xp.clip(y, 1e-12, None) ** (1 / 3), 7.787 * y + 16 / 116) - 16


def lab_to_rgb(lab):
    """Lab (B, 3, H, W) -> sRGB in [0, 1], clipped like scikit-image's lab2rgb."""
    xp = _namespace(lab)
    L, a, b = lab[:, 0], lab[:, 1], lab[:, 2]
    fy = (L + 16) / 116
    f = xp.stack([a / 500 + fy, fy, xp.clip(fy - b / 200, 0, None)], axis=1)
    xyz = xp.where(f > 0.2068966, f ** 3, (f - 16 / 116) / 7.787)
    xyz = xyz * _constant(_WHITE_D65, lab).reshape(1, 3, 1, 1)
    return xp.clip(linear_to_srgb(_channel_matmul(_RGB_FROM_XYZ, xyz)), 0, 1)


# The network sees L in [-1, 1] and predicts ab in [-1, 1]: the only place the scaling lives.
AB_SCALE = 110.0


def lab_to_net(lab):
    """Lab (B, 3, H, W) -> (real_A, real_B): L/50 - 1 (B, 1, H, W) and ab/110 (B, 2, H, W)."""
    return lab[:, :1] / 50 - 1, lab[:, 1:] / AB_SCALE


def net_to_lab(real_A, fake_B):
    """Inverse of lab_to_net; predicted ab is clamped to the valid range first."""
    xp = _namespace(real_A)
    return xp.concatenate([(real_A + 1) * 50, xp.clip(fake_B, -1, 1) * AB_SCALE], axis=1)


# -----------------------------------------------------------------------------
# Files

def is_image_file(path):
    return os.path.splitext(path)[1].lower() in IMG_EXTENSIONS


def find_images(paths, unreadable=None, exclude=None):
    """Expand files, folders (recursive) and glob patterns into a sorted list of image paths, each
    real file once however many names (symlinks, overlapping patterns) lead to it.

    A path that matches nothing raises FileNotFoundError naming it. A named path that is not a
    regular file (a FIFO, socket or device) is kept, so that loading it names it as such. A folder
    that cannot be read (permission denied, a path too long) is appended to unreadable as
    (folder, reason) and the others are still searched; without that list it raises UserError.
    exclude: a folder (the command's output folder) not entered when it lies inside a searched folder,
    compared as a real path, so that a second run does not take the first one's outputs for photos.
    """
    bad = [] if unreadable is None else unreadable
    found = []
    for p in paths:
        p = os.path.expanduser(str(p))
        if os.path.isdir(p):
            for root, files in walk_files(p, bad, exclude=exclude):  # symlinked folders are not followed: no loops
                found += [os.path.join(root, f) for f in files if is_image_file(f)]
        elif os.path.lexists(p):
            found.append(p)  # named explicitly: let loading say if it is not an image
        else:
            n_bad = len(bad)
            matches = _glob_recursive(p, bad, exclude) if "**" in p else glob.glob(p)
            matches = [m for m in matches if not os.path.isdir(m)]
            if not matches and len(bad) == n_bad:
                raise FileNotFoundError(f"no such file, folder or pattern: {p}")
            found += matches
    if unreadable is None and bad:
        folder, why = bad[0]
        raise UserError(f"{folder}: cannot read this folder ({why})")
    return unique_files(found)


def walk_files(top, unreadable, followlinks=False, exclude=None):
    """(folder, names of its non-folder entries) for top and every folder under it, at any depth
    (a loop, not recursion: os.walk overflows the stack 1,000 folders deep). A folder that cannot
    be read is appended to unreadable as (folder, reason). With followlinks, symlinked folders are
    entered too, each real folder once, so that link loops end. A folder under top whose real path is
    exclude's is not entered."""
    stack, seen = [top], set()
    skip = os.path.realpath(exclude) if exclude else None
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
            if enter and not (skip and os.path.realpath(entry.path) == skip):
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


def _glob_recursive(pattern, unreadable, exclude=None):
    """glob.glob(pattern, recursive=True), except that each real folder is entered once, so
    symlink loops end instead of descending until the path is too long, and a folder that cannot
    be read is appended to unreadable."""
    parts = pattern.split(os.sep)
    k = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = os.sep.join(parts[:k]) or (os.sep if pattern.startswith(os.sep) else os.curdir)
    if not os.path.isdir(base):
        return []
    found = []
    for root, files in walk_files(base, unreadable, followlinks=True, exclude=exclude):
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


def open_image(path, max_pixels=100_000_000, say_frames=True):
    """Open an image file as a decoded PIL image as displayed: EXIF orientation applied, the first
    frame of an animation (or page of a multi-page TIFF), which say_frames says in a warning. Raises
    BadImageError naming the file, with a plain reason; never blocks on a FIFO or device. Pillow's
    warnings about a file that opens (damaged EXIF) are printed as one line each, "warning: FILE: ...",
    on stderr; those about a file that is refused are dropped."""
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
    with warnings.catch_warnings(record=True) as caught:  # Pillow's warnings, said in our words below
        warnings.simplefilter("always")
        img = _decode(path, max_pixels, say_frames)
    for message in dict.fromkeys(filter(None, map(_warning_text, caught))):  # each once
        tqdm.write(f"warning: {display_name(path)}: {message}", file=sys.stderr)
    return img


def _warning_text(warning):
    """A library warning about an image file that opened, as one line of ours, or None where it is harmless."""
    if issubclass(warning.category, Image.DecompressionBombWarning):
        return None  # MAX_PIXELS is the guard, and its refusal has its own message
    text = " ".join(str(warning.message).split())
    if "EXIF" in text or "TiffImagePlugin" in warning.filename:  # EXIF blocks are read by Pillow's TIFF parser
        return f"its EXIF (or TIFF tag) metadata is damaged; what could not be read of it was ignored ({text[:100]})"
    return text[:150]


def _decode(path, max_pixels, say_frames=True):
    """open_image's work, inside its catch_warnings."""
    try:
        img = Image.open(path)
        w, h = img.size
        if w * h > max_pixels:
            img.close()
            raise BadImageError(f"{path}: {w}x{h} = {w * h} pixels is over the limit of {max_pixels} "
                                f"(raise --max-pixels if you trust this file)")
        frames = getattr(img, "n_frames", 1) if say_frames else 1  # before load(): counting frames seeks
        img.seek(0)
        try:
            img.load()
        except OSError as e:
            whole = _jpeg_without_end_marker(path, img, e)
            if whole is None:
                raise
            img.close()
            img = whole
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy of a huge photo
        problem = float_pixels_problem(img)
        if problem:
            img.close()
            raise BadImageError(f"{path}: {problem}")
        if frames > 1:  # said once it is known to open, through open_image's warning lines
            warnings.warn(f"{frames} frames (an animation or a multi-page file); only the first is used", stacklevel=2)
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


def _jpeg_without_end_marker(path, img, error):
    """The image of a JPEG whose only fault is a missing end marker (EOI), which Pillow refuses as
    truncated, or None for any other file or error. Pillow's LOAD_TRUNCATED_IMAGES would accept
    files cut off in their image data too (and is global), so instead the file is decoded twice in
    memory, with the end marker added and with filler bytes before it: all the data is there when
    the two agree (the filler after the last block is skipped), and when the data ends early the
    filler is decoded as image data and they differ."""
    if img.format != "JPEG" or "truncated" not in str(error).lower():
        return None
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(b"\xff\xd9"):
        return None
    data = data.removesuffix(b"\xff")  # the first byte of the marker there, the second not

    def decoded(tail):
        whole = Image.open(io.BytesIO(data + tail))
        whole.load()
        return whole
    try:
        whole, filled = decoded(b"\xff\xd9"), decoded(b"\x55" * 64 + b"\xff\xd9")
    except Exception:
        return None
    same = whole.tobytes() == filled.tobytes()
    filled.close()
    return whole if same else None


def float_pixels_problem(image, band_pixels=1 << 20):
    """Why the pixels of a float image (a PIL mode "F" image, a float array) cannot be used, or None:
    NaN or Inf, or values outside [0, 1] (a float image in 0..255 would come out white). One rule for
    files, PIL images and arrays; checked in bands of rows, so no full-size copy is made."""
    is_pil = isinstance(image, Image.Image)
    if (image.mode != "F") if is_pil else (image.dtype.kind != "f"):
        return None
    W, H = image.size if is_pil else image.shape[1::-1]

    def rows(y0, y1):
        return np.asarray(image.crop((0, y0, W, y1)), dtype=np.float32) if is_pil else image[y0:y1]
    lo, hi = np.inf, -np.inf
    step = max(1, band_pixels // max(1, W))
    for y in range(0, H, step):
        band = rows(y, min(H, y + step))
        if not np.isfinite(band).all():
            return "holds NaN or Inf pixel values (float pixels must be finite numbers in [0, 1])"
        lo, hi = min(lo, float(band.min(initial=np.inf))), max(hi, float(band.max(initial=-np.inf)))
    if lo < 0 or hi > 1:
        return (f"float pixel values must be in [0, 1], these are in [{lo:g}, {hi:g}] "
                f"(divide by 255 or 65535 first, or save the image as 8 or 16 bits)")
    return None


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


def load_image(path, max_pixels=100_000_000, say_frames=True):
    """Read any common image file as float RGB in [0, 1], shape (H, W, 3), plus alpha (H, W) or None.

    EXIF orientation is applied; 16-bit, palette, CMYK, LA/RGBA and grayscale inputs are handled;
    an animated file gives its first frame; any size from 1x1 up to max_pixels is accepted.
    Raises BadImageError naming the file, with a plain reason; say_frames: as open_image.
    """
    with open_image(path, max_pixels, say_frames) as img:
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
    if "truncated" in str(error).lower() or isinstance(error, EOFError):  # Pillow: "image file is truncated", "Truncated File Read"
        return "file is truncated or damaged (the image data ends early)"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, MemoryError):
        return "too large to decode in the memory available (lower --max-pixels)"
    return f"not a readable image ({error})"


def is_grayscale(rgb, tol=2 / 255):
    """True when an (H, W, 3) float image has (almost) no colour: every channel equals the others."""
    return float(np.abs(rgb - rgb.mean(axis=2, keepdims=True)).mean()) < tol


# -----------------------------------------------------------------------------
# The gray version of a photo

def to_8bit(rgb):
    """Round float RGB to what an 8-bit file stores, so scores match the PNGs --infer writes."""
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.float32) / 255


def without_colour(rgb):
    """sRGB (B, 3, H, W) in [0, 1] (array or tensor) -> the same lightness with Lab a = b = 0: the photo in gray."""
    lab = rgb_to_lab(rgb)
    lab[:, 1:] = 0
    return lab_to_rgb(lab)


def gray_version(rgb):
    """A photo (H, W, 3) float in [0, 1] without its colour, as an 8-bit image with R = G = B: the
    input a user of --infer would have, and the gray baseline of --eval."""
    gray = without_colour(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0].mean(0)  # channels differ by rounding only
    return to_8bit(np.repeat(gray[..., None], 3, axis=2))


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
