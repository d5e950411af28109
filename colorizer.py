"""The inference API: load a model once, colorize any number of photos.

    from colorize_base import Colorizer
    colorizer = Colorizer.load()                      # the bundled model, on CUDA when present
    colorizer.colorize("old.jpg").save("old_colour.png")

--infer, --eval and the web page all go through Colorizer.colorize. Everything around the network
is numpy here, one definition for both engines (backends.py): torch, and onnxruntime for .onnx
models, which needs no PyTorch.
"""
import collections
import numbers
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image
from tqdm import tqdm

from backends import OnnxNetwork, TorchNetwork, choose_backend
from files import UserError, atomic_write, describe_os_error, display_name, fit_name, make_folders
from hints import SIDECAR_SUFFIX, HintError, hint_planes, read_hints, short_repr, sidecar_path
from images import (IMG_EXTENSIONS, BadImageError, find_images, float_pixels_problem, image_to_array, integer_scale,
                    lab_to_net, lab_to_rgb, net_to_lab, open_image, render_shape, rgb_to_L, unique_files)
from video import TEMPORAL, colorize_video, find_videos, is_video_file

BUNDLED_WEIGHTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "colorizer.pt")
MAX_SATURATION = 100.0  # as SATURATION's bound on the command line: ab beyond 100 x its range is clipped anyway
BAND_PIXELS = 1 << 20  # full-resolution colour work is done in bands of about this many pixels (1M: ~12 MB a channel)


class Colorizer:
    """A network ready for inference (backends.py: the EMA weights of a checkpoint or exported model
    on a torch device, or an ONNX model on onnxruntime) and the settings it colorizes with.
    Colorization is deterministic (no dropout, no sampling)."""

    def __init__(self, network, render_size=256, max_pixels=100_000_000, weights=None, saturation=1.0, hint_spread=0.125):
        self.network, self.cfg, self.weights = network, network.cfg, weights
        self.render_size, self.max_pixels, self.saturation = render_size, max_pixels, saturation
        self.hint_spread = hint_spread

    @classmethod
    def load(cls, weights=BUNDLED_WEIGHTS, device="auto", render_size=256, max_pixels=100_000_000, saturation=1.0,
             backend="auto", threads=0, hint_spread=0.125):
        """Load a checkpoint, exported model or ONNX model (default: the bundled one). The defaults are
        those of RENDER_SIZE, MAX_PIXELS, SATURATION, BACKEND, THREADS and HINT_SPREAD in colorize_base.py, whose
        command line passes its own. backend: auto (onnx for an .onnx file or without PyTorch), torch
        or onnx; threads: onnxruntime's (0: its own choice; torch's are set by set_threads)."""
        backend, weights = choose_backend(os.fsdecode(weights), backend, device)  # a bytes path too
        network = OnnxNetwork(weights, threads) if backend == "onnx" else TorchNetwork.load(weights, device)
        return cls(network, render_size, max_pixels, weights, saturation, hint_spread)

    @property
    def takes_hints(self):
        """Whether the model was trained to follow colour hints (HINT_INPUT)."""
        return bool(self.network.hint_channels)

    @property
    def device(self):
        """Where the network runs, in words: 'cpu', 'cuda:0', 'cpu (onnxruntime)'."""
        return self.network.describe()

    def colorize(self, image, render_size=None, hints=None, saturation=None, reference=None):
        """Colorize one photo; returns a PIL image of the same size, RGB, or RGBA when the input has alpha.

        image: a file path, a PIL image, or an (H, W) / (H, W, 3) uint8 or float array (floats in [0, 1];
        NaN, Inf or values outside [0, 1] are refused), or (H, W, 2) / (H, W, 4) with alpha last.
        hints: colour hints [(x, y, "#rrggbb"), ...] in the image's own pixels (see hints.py); needs
        a model trained with HINT_INPUT. None or [] is the automatic result. The network takes them,
        and then its remaining error at each hint is spread around it (spread_hints, hint_spread).
        saturation: the predicted ab is multiplied by it (in Lab, after the network): 1 as predicted,
        0 gray, above 1 more colourful, at most MAX_SATURATION; None: the Colorizer's (SATURATION).
        reference: a colour photo (path, PIL image or array) whose colours guide this one: the parts of
        it that match parts of the photo become hints, and its palette is laid over the result as far
        as the two photos look alike (reference.reference_guide, apply_palette); the user's hints win
        where they are, and with them no palette is laid. Needs a hint model on the torch backend (its
        encoder does the matching).
        Colour in the input is discarded. The network sees the luminance resized so that its longer
        side is render_size (never enlarged); the predicted ab is upsampled to the original size and
        joined with the original full-resolution L, in bands, so memory stays bounded on huge photos.
        """
        render_size = self.render_size if render_size is None else render_size
        saturation = self.saturation if saturation is None else saturation
        # NumPy scalars count as numbers (numbers.Integral / Real); True and False do not
        if isinstance(render_size, bool) or not (isinstance(render_size, numbers.Integral) and render_size > 0):
            raise ValueError(f"render_size must be a positive whole number of pixels, got {render_size!r}")
        if isinstance(saturation, bool) or not (isinstance(saturation, numbers.Real) and 0 <= saturation <= MAX_SATURATION):
            raise ValueError(f"saturation must be a number >= 0, got {saturation!r} (at most {MAX_SATURATION:g}, "
                             f"as --saturation)")
        render_size, saturation = int(render_size), float(saturation)
        if isinstance(hints, np.ndarray):  # an (n, 3) array of hints: its rows, as a list is
            hints = hints.tolist()
        read_rows, H, W = _row_reader(image, self.max_pixels)
        step = max(1, BAND_PIXELS // W)
        bands = [(y, min(H, y + step)) for y in range(0, H, step)]

        def luminance(y0, y1):  # the photo's own L of rows y0..y1 in network scaling (1, 1, y1 - y0, W), and their alpha
            rgb, a = read_rows(y0, y1)
            return lab_to_net(rgb_to_L(rgb.transpose(2, 0, 1)[None]))[0], a

        h, w = render_shape(H, W, render_size)
        planes = self._hint_input(hints, W, H, w, h, saturation) if hints else None  # checked before any work
        users = planes  # the user's hints alone: those of a reference are guesses, not to be enforced
        if reference is not None:
            self.check_reference()

        # 1. the luminance at render size (longer side render_size, never enlarged), area-averaged:
        #    each band is averaged across the width here, the rows below, so full-size L is never held
        def pooled(band):  # a band's L averaged across the width, and its alpha
            L, a = luminance(*band)
            return area_resize(L, w, axis=3), a

        L_w = np.empty((1, 1, H, w), np.float32)
        alpha = None
        for (y0, y1), (L, a) in zip(bands, in_parallel(pooled, bands, self.network.threads)):
            L_w[..., y0:y1, :] = L
            if a is not None:
                alpha = np.empty((H, W), np.uint8) if alpha is None else alpha
                alpha[y0:y1] = np.round(a * 255)
        small = np.clip(area_resize(L_w, h, axis=2), -1, 1)
        guide = None
        if reference is not None:  # the reference's matched colours as hints, the user's over them
            import reference as matching  # torch: the torch backend has it
            guide = matching.reference_guide(self.network.netG, small, reference, (W, H), max_pixels=self.max_pixels)
            user_hints = list(hints or [])
            hints = matching.merge_hints(guide.hints, user_hints, W, H, w, h)
            planes = self._hint_input(hints, W, H, w, h, saturation) if hints else None
            if user_hints:  # the user's own colours are not to be moved toward the reference's palette
                guide = None

        # 2. the network, on the luminance padded to its multiple (repeating the edge)
        fake_B = self.network(pad_to(small, self.network.multiple, "edge"), planes)[..., :h, :w]
        if users is not None:
            fake_B = spread_hints(small, users[..., :h, :w], fake_B, self.hint_spread)
        if saturation != 1:
            fake_B = fake_B * np.float32(saturation)  # clamped to the ab range when converted back
        if guide is not None:  # as far as the photos look alike, the reference's palette over the whole
            fake_B = matching.apply_palette(fake_B, guide)

        # 3. ab upsampled to full size (bilinear, separable: the width once, the rows per band) and
        #    joined with the full-resolution L, band by band
        ab_rows = linear_resize(fake_B, W, axis=3)  # (1, 2, h, W)
        def coloured(band):  # a band of the result, 8-bit RGB
            rgb = lab_to_rgb(net_to_lab(luminance(*band)[0], linear_resize(ab_rows, H, axis=2, rows=band)))
            return np.round(rgb[0] * 255).astype(np.uint8).transpose(1, 2, 0)

        result = Image.new("RGB", (W, H))
        for (y0, _), rgb in zip(bands, in_parallel(coloured, bands, self.network.threads)):
            result.paste(Image.fromarray(rgb), (0, y0))
        if alpha is not None:
            result.putalpha(Image.fromarray(alpha))
        return result

    def check_reference(self, reference=None):
        """HintError or UserError in one line unless a reference photo can guide this model's photos:
        it must take hints and run on torch (its encoder does the matching); and, when reference is
        given, it must be readable, within max_pixels and in colour (reference.check_reference)."""
        if not self.takes_hints:
            raise HintError("this model takes no colour hints, so a reference photo cannot guide it (it was "
                            "trained without HINT_INPUT)")
        if not isinstance(self.network, TorchNetwork):
            raise UserError("a reference photo needs the torch backend (the model's encoder matches the two "
                            "photos): a .pt model with --backend torch")
        if reference is not None:
            import reference as matching  # torch: the torch backend has it
            matching.check_reference(reference, self.max_pixels)

    def _hint_input(self, hints, W, H, w, h, saturation):
        """The network's hint planes for hints on a W x H photo rendered at w x h, padded with zeros."""
        if not self.takes_hints:
            raise HintError("this model takes no colour hints (it was trained without HINT_INPUT; "
                            "fine-tune it with --hint-input true, see the README)")
        planes = hint_planes(hints, W, H, w, h)
        if saturation > 0:  # in the network's own (muted) scale, so that the gain gives the hinted colour back
            planes[:, :2] /= saturation
        return pad_to(planes, self.network.multiple, "constant")


HINT_SPREAD_LIGHTNESS = 15.0  # a hint's correction fades across lightness steps of about this many Lab L*
HINT_SPREAD_REACH = 0.01      # how far a correction holds: at weight 0.01 of one hinted pixel it is half gone
SPREAD_GRID = 64              # the corrections are summed on a grid of at most this many cells a side
SPREAD_LEVELS = 8             # ... and this many lightness levels (a bilateral grid, Chen et al. 2007)


def spread_hints(L, planes, ab, spread):
    """The network's ab (1, 2, h, w) corrected around the user's hints: at each hinted pixel of planes
    (1, 3, h, w) the error hint - ab, spread over the photo with weights that fall off as a Gaussian
    of distance (sigma: spread x the longer side) and of lightness difference (L (1, 1, h, w), sigma
    HINT_SPREAD_LIGHTNESS), so it stays on things as light as the hinted one (the edge-aware spread of
    Levin et al. 2004, on the network's answer instead of on gray). Each pixel gets the weighted mean
    error, damped to nothing far from every hint; the network's own use of a hint is local and
    partial, and this makes the hinted colour hold where the user put it and on what surrounds it.
    The sums run on a coarse grid of position and lightness, so the cost does not grow with the
    number of hints or the render size."""
    mask = planes[0, 2] > 0
    if spread <= 0 or not mask.any():
        return ab
    h, w = mask.shape
    cell = -(-max(h, w) // SPREAD_GRID)                           # render pixels per grid cell
    gh, gw = -(-h // cell), -(-w // cell)
    ys, xs = np.nonzero(mask)
    error = planes[0, :2][:, ys, xs] - ab[0][:, ys, xs]          # (2, n)
    levels = np.linspace(-1, 1, SPREAD_LEVELS, dtype=np.float32)  # L in network scaling: L* = 50 (L + 1)
    sigma_l = HINT_SPREAD_LIGHTNESS / 50
    near = np.exp(-(levels[:, None] - L[0, 0, ys, xs]) ** 2 / (2 * sigma_l ** 2))  # (levels, n)
    index = (ys // cell) * gw + xs // cell
    grid = np.stack([[np.bincount(index, k * v, gh * gw) for k in near] for v in (*error, np.ones_like(error[0]))])
    sigma = spread * max(h, w) / cell                             # in grid cells

    def gauss(n):
        d = np.arange(n, dtype=np.float32)
        return np.exp(-(d[:, None] - d) ** 2 / (2 * sigma ** 2))
    grid = gauss(gh) @ grid.reshape(3, SPREAD_LEVELS, gh, gw).astype(np.float32) @ gauss(gw)
    # each pixel reads the grid at its place (bilinear) and its lightness (linear between levels)
    position = (L[0, 0] + 1) / 2 * (SPREAD_LEVELS - 1)
    total = np.zeros((3, h, w), np.float32)
    for k in range(SPREAD_LEVELS):
        weight = np.maximum(0, 1 - np.abs(position - k))
        if weight.any():
            total += weight * linear_resize(linear_resize(grid[:, k], w, axis=2), h, axis=1)
    return ab + (total[:2] / (total[2] + HINT_SPREAD_REACH))[None]


def in_parallel(fn, items, threads):
    """fn over items, results in order, on up to threads threads (numpy lets go of the GIL in its
    array work) and never more than threads results ahead of the caller, so a few bands at most
    are in memory."""
    if threads <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads) as pool:
        ahead = collections.deque()
        for item in items:
            ahead.append(pool.submit(fn, item))
            if len(ahead) >= threads:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


# -----------------------------------------------------------------------------
# Resampling, as torch computes it (adaptive_avg_pool2d, interpolate(mode="bilinear")), in numpy

def area_resize(x, n, axis):
    """x resized to n along axis by averaging, as torch's adaptive_avg_pool2d does: output i is the
    mean of inputs floor(i * N / n) up to ceil((i + 1) * N / n), exclusive (windows overlap when n
    does not divide N). Sums come from a float64 running sum, exact enough at any size."""
    N = x.shape[axis]
    if N == n:
        return x
    i = np.arange(n)
    start, end = i * N // n, -(-(i + 1) * N // n)
    total = np.cumsum(x, axis=axis, dtype=np.float64)
    total = np.concatenate([np.zeros_like(np.take(total, [0], axis)), total], axis=axis)
    count = (end - start).reshape([-1 if d == axis % x.ndim else 1 for d in range(x.ndim)])
    return ((np.take(total, end, axis) - np.take(total, start, axis)) / count).astype(np.float32)


def linear_resize(x, n, axis, rows=None):
    """x resized to n along axis by linear interpolation with half-pixel centres (bilinear's
    align_corners=False, one axis at a time); rows=(y0, y1) makes only those outputs."""
    N = x.shape[axis]
    y0, y1 = rows or (0, n)
    src = np.maximum((np.arange(y0, y1, dtype=np.float32) + 0.5) * np.float32(N / n) - 0.5, 0)  # in float32, as torch
    i0 = np.minimum(src.astype(np.int64), N - 1)
    i1 = np.minimum(i0 + 1, N - 1)
    frac = (src - i0.astype(np.float32)).reshape([-1 if d == axis % x.ndim else 1 for d in range(x.ndim)])
    return np.take(x, i0, axis) * (1 - frac) + np.take(x, i1, axis) * frac


def pad_to(x, m, mode):
    """(B, C, h, w) padded on the bottom and right to multiples of m: "edge" repeats the last row and
    column (L), "constant" adds zeros (hints); the output is cropped back with [..., :h, :w]."""
    return np.pad(x, ((0, 0), (0, 0), (0, -x.shape[2] % m), (0, -x.shape[3] % m)), mode=mode)


def _row_reader(image, max_pixels):
    """(read_rows, H, W) for a path, PIL image or array; read_rows(y0, y1) gives those rows as
    (float RGB (h, W, 3) in [0, 1], alpha (h, W) or None), so a huge photo is never held in float.
    The same rules for all three: at most max_pixels, and float pixels finite and in [0, 1]
    (open_image checks files, float_pixels_problem the rest)."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image(os.fspath(image), max_pixels)
    if isinstance(image, Image.Image):
        W, H = image.size
        if W * H == 0:
            raise ValueError(f"PIL image of {W}x{H} pixels: an image needs at least one")
        if W * H > max_pixels:
            raise ValueError(f"image of {W}x{H} = {W * H} pixels is over the limit of {max_pixels}")
        problem = float_pixels_problem(image)
        if problem:
            raise ValueError(f"PIL image: {problem}")
        scale = integer_scale(image) if image.mode.startswith("I") else None
        return (lambda y0, y1: image_to_array(image.crop((0, y0, W, y1)), scale)), H, W
    if not isinstance(image, (np.ndarray, list, tuple)) and not hasattr(image, "__array__"):
        raise ValueError(f"expected a file path, a PIL image or an image array, got {type(image).__name__} "
                         f"{short_repr(image)}" + (" (a file's bytes? pass its path, or Image.open(io.BytesIO(data)))"
                                                   if isinstance(image, (bytes, bytearray)) else ""))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or 0 in arr.shape:
        raise ValueError(f"expected an (H, W), (H, W, 3) or, with alpha, (H, W, 2) / (H, W, 4) image array, "
                         f"got shape {np.shape(image)}")
    H, W = arr.shape[:2]
    if W * H > max_pixels:
        raise ValueError(f"image array of {W}x{H} = {W * H} pixels is over the limit of {max_pixels}")
    if arr.dtype == np.uint8:
        scale = 255.0
    elif arr.dtype.kind == "f":
        scale = 1.0
        problem = float_pixels_problem(arr)
        if problem:
            raise ValueError(f"image array: {problem}")
    else:
        raise ValueError(f"expected a uint8 or float image array, got dtype {arr.dtype}")
    colour = 3 if arr.shape[2] >= 3 else 1  # (H, W, 2) is gray and alpha, (H, W, 4) RGB and alpha, as LA / RGBA

    def read_rows(y0, y1):
        rows = arr[y0:y1].astype(np.float32) / scale
        alpha = rows[..., colour] if arr.shape[2] > colour else None
        return np.broadcast_to(rows[..., :colour], (y1 - y0, W, 3)).copy(), alpha
    return read_rows, H, W


# -----------------------------------------------------------------------------
# Colorizing many files: --infer

def colorize_files(colorizer, inputs, out_dir, debug=False, hints_file=None, temporal=TEMPORAL, reference=None):
    """Colorize every image under inputs (files, folders, globs) into out_dir as <stem>.png, and every
    video (video.VIDEO_SUFFIXES) as <stem>.mp4 (video.colorize_video, temporal filter strength temporal).
    Colour hints come from hints_file (one input only), else from photo.hints.json beside each photo (a film:
    reel.hints.json beside reel.mp4, hints with frame numbers, video.read_clip_hints) when there is one. A file
    that fails (or its hints) is reported by name and the others still run. reference: a colour photo
    that guides every photo (Colorizer.colorize), refused before any work when it cannot. Returns the
    number that failed."""
    if reference is not None:
        colorizer.check_reference(reference)
    files, failed, unreadable, empty = [], [], [], []
    for p in inputs:  # a missing input, or a folder without images, is reported; the others still run
        n_unreadable = len(unreadable)
        try:
            found = find_images([p], unreadable, exclude=out_dir)  # --out inside an input folder: not an input
            found += find_videos([p], [], exclude=out_dir)  # films in a folder too (its unreadable parts said once)
        except FileNotFoundError:
            failed.append((p, "no such file, folder or pattern"))
            continue
        if not found and len(unreadable) == n_unreadable:  # a folder (even one named x.jpg) with no photo in it
            empty.append(p)
        files += found
    if empty and not files and not failed and not unreadable:
        raise UserError(f"no image files in {', '.join(map(display_name, empty))} "
                        f"(a folder is searched for {', '.join(sorted(IMG_EXTENSIONS))}), so nothing was colorized")
    failed += [(p, f"a folder holding no image files ({', '.join(sorted(IMG_EXTENSIONS))})") for p in empty]
    failed += [(folder, f"cannot read this folder ({why}), so the photos in it were not colorized")
               for folder, why in unreadable]
    files = unique_files(files)  # one real file once, across inputs too
    if hints_file and len(files) + len(failed) != 1:
        raise UserError(f"--hints {hints_file} is for one photo, got {len(files) + len(failed)}; for many photos "
                        f"put photo{SIDECAR_SUFFIX} beside each photo.jpg")
    make_output_dir(out_dir)
    targets = output_paths(inputs, files, out_dir, others=[hints_file] if hints_file else [])
    n_ok = 0
    for f in tqdm(files, desc="colorize", unit="img", dynamic_ncols=True):
        sidecar = sidecar_path(f)
        source = hints_file or (sidecar if os.path.lexists(sidecar) else None)  # not a file: read_hints says so
        try:
            if is_video_file(f) and reference is not None:
                raise UserError("--reference is not yet for films")
            if is_video_file(f):  # film: <stem>.mp4, frame by frame (video.py)
                colorize_video(colorizer, f, targets[f], temporal, inputs=files, hints_path=source)
                n_ok += 1
                continue
            hints = read_hints(source) if source else None
            try:
                result = colorizer.colorize(f, hints=hints, reference=reference)
            except HintError as e:
                raise UserError(f"{source}: {e}") from None
            save_png(result, targets[f])
            n_ok += 1
        except Exception as e:  # keep going: one bad file must not end a batch of thousands
            if debug and not isinstance(e, (BadImageError, UserError)):
                raise
            failed.append((f, failure_reason(f, e)))
    folders = f"; {len(unreadable)} folder(s) could not be read" if unreadable else ""
    print(f"colorized {n_ok} of {n_ok + len(failed) - len(unreadable)} files into {display_name(out_dir)}{folders}")
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
    for f, why in failed:
        print(f"failed: {display_name(f)}: {display_name(why)}", file=sys.stderr)
    return len(failed)


def output_paths(inputs, files, out_dir, others=()):
    """Output path for each file: folders are mirrored under out_dir so equal names never collide,
    a file is never written over an input (nor over others, the command's other input files), and
    two inputs never share an output. Files are compared as real files (symlinks resolved, hard
    links by inode), not as spelled paths."""
    roots = [os.path.abspath(p) for p in inputs if os.path.isdir(p)]
    inodes = {(st.st_dev, st.st_ino) for st in map(_stat_or_none, [*files, *others]) if st}
    taken = {os.path.realpath(f) for f in [*files, *others]}
    result = {}
    for f in files:
        af = os.path.abspath(f)
        root = next((r for r in roots if af.startswith(r + os.sep)), None)
        folder = os.path.normpath(os.path.join(out_dir, os.path.relpath(os.path.dirname(af), root) if root else "."))
        stem = os.path.splitext(os.path.basename(f))[0]
        suffix = ".mp4" if is_video_file(f) else ".png"
        out, n = os.path.join(folder, fit_name(stem, suffix)), 1  # every name fits in NAME_MAX bytes
        while os.path.realpath(out) in taken or (_stat_key(out) in inodes):
            out = os.path.join(folder, fit_name(stem, f"_{n}{suffix}"))
            n += 1
        taken.add(os.path.realpath(out))
        result[f] = out
    return result


def _stat_or_none(path):
    try:
        return os.stat(path)
    except OSError:
        return None


def _stat_key(path):
    st = _stat_or_none(path)
    return (st.st_dev, st.st_ino) if st else None


def save_png(img, path):
    """Save a PIL image as PNG, all or nothing, creating its folder; UserError saying why it cannot."""
    try:
        make_folders(os.path.dirname(path))
    except OSError as e:
        raise UserError(f"cannot write the output {path}: {describe_os_error(e)}") from None
    atomic_write(path, lambda f: img.save(f, format="PNG"), "output")


def make_output_dir(path):
    """Create an output folder, or stop with a message naming it."""
    try:
        make_folders(path)
    except OSError as e:
        raise UserError(f"cannot create output folder {path}: {describe_os_error(e)}") from None
    return path


def failure_reason(path, error):
    """One line saying why a file failed: a BadImageError's own reason, else the error in short."""
    if isinstance(error, (BadImageError, UserError)):
        return display_name(str(error).removeprefix(path + ": "))
    return display_name(f"unexpected error {type(error).__name__}: {error} (run with --debug for details)")
