"""Colorize film: a video file is decoded frame by frame (PyAV), each frame colorized by the photo
pipeline (Colorizer.colorize), its colour (Lab ab) smoothed in time where the picture holds still,
and the frames encoded as H.264 with the audio stream copied.

    from colorizer import Colorizer
    from video import colorize_video
    colorize_video(Colorizer.load(), "reel.mp4", "reel_colour.mp4")

PyAV is optional (pip install -r requirements-video.txt): without it this module still imports,
and colorize_video says how to install it. The metrics at the end (flicker, cdc) are numpy only.
"""
import os

import numpy as np
from tqdm import tqdm

from files import UserError, atomic_write, check_writable_target, make_folders, same_file
from images import lab_to_rgb, rgb_to_L, rgb_to_lab, walk_files

try:
    import av
except ImportError:
    av = None

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")  # --infer takes these as film (any letter case)
TEMPORAL = 0.8        # default strength of the temporal filter of ab, 0..1 (0: every frame alone)
L_TOLERANCE = 3.0     # Lab L change (of the 5x5-averaged L) at which a pixel's memory of past colour falls to 1/e
CUT_THRESHOLD = 0.3   # a scene cut: L histograms (64 bins) of consecutive frames differ by more than this (total variation, 0..1)
STILL_L = 2.0         # flicker counts the pixels whose L changes by less than this between frames
INSTALL = "pip install -r requirements-video.txt"


def is_video_file(path):
    """Whether the name ends in one of VIDEO_SUFFIXES, in any letter case."""
    return os.fspath(path).lower().endswith(VIDEO_SUFFIXES)


def find_videos(folders, unreadable, exclude=None):
    """The video files under each folder of folders (searched like find_images searches for photos;
    files named on the command line come in through find_images itself)."""
    found = []
    for p in folders:
        if os.path.isdir(p):
            for root, names in walk_files(p, unreadable, exclude=exclude):
                found += [os.path.join(root, f) for f in names if is_video_file(f)]
    return found


# -----------------------------------------------------------------------------
# Temporal consistency

def _box5(x):
    """A 5x5 box mean of an (H, W) array, edges repeated (numpy only): L without the film grain."""
    p = np.pad(x, 2, mode="edge").astype(np.float64)
    c = np.cumsum(np.cumsum(p, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    H, W = x.shape
    return ((c[5:5 + H, 5:5 + W] - c[:H, 5:5 + W] - c[5:5 + H, :W] + c[:H, :W]) / 25).astype(np.float32)


def l_histogram(L):
    """The 64-bin histogram of L (0..100), summing to 1."""
    h, _ = np.histogram(L, bins=64, range=(0, 100))
    return h / max(h.sum(), 1)


def is_cut(hist_prev, hist):
    """A scene cut between two frames: their L histograms' total variation distance exceeds CUT_THRESHOLD."""
    return 0.5 * float(np.abs(hist - hist_prev).sum()) > CUT_THRESHOLD


class TemporalFilter:
    """An exponential moving average of ab across frames, per pixel: the past weighs strength times
    exp(-(dL / L_TOLERANCE)^2), where dL is the change of the 5x5-averaged L since the last frame, so a
    still pixel keeps its colour and a moving one takes the new frame's. A scene cut (is_cut) starts
    over from the new frame's own colour. strength 0: every frame alone."""

    def __init__(self, strength=TEMPORAL):
        if not 0 <= strength < 1:
            raise ValueError(f"temporal strength must be in [0, 1), got {strength!r}")
        self.strength, self.cuts = float(strength), 0
        self.L = self.hist = self.ab = None

    def __call__(self, L, ab):
        """L (H, W) in 0..100 and ab (H, W, 2) of one frame -> its filtered ab (H, W, 2)."""
        L_smooth, hist = _box5(L), l_histogram(L)
        cut = self.hist is not None and is_cut(self.hist, hist)
        self.cuts += cut
        if self.strength == 0 or self.ab is None or cut or self.ab.shape != ab.shape:
            self.ab = ab.astype(np.float32)
        else:
            w = self.strength * np.exp(-((L_smooth - self.L) / L_TOLERANCE) ** 2)[..., None]
            self.ab = (w * self.ab + (1 - w) * ab).astype(np.float32)
        self.L, self.hist = L_smooth, hist
        return self.ab


def frame_lab(colorizer, rgb):
    """An 8-bit (H, W, 3) frame -> (its own L (H, W), the colorizer's ab (H, W, 2)), in Lab units."""
    L = rgb_to_L(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
    out = np.asarray(colorizer.colorize(rgb).convert("RGB"), np.float32) / 255
    ab = rgb_to_lab(out.transpose(2, 0, 1)[None])[0, 1:].transpose(1, 2, 0)
    return L, ab


def compose(L, ab):
    """L (H, W) and ab (H, W, 2) -> 8-bit RGB (H, W, 3)."""
    lab = np.concatenate([L[None, None], ab.transpose(2, 0, 1)[None]], axis=1)
    return np.round(lab_to_rgb(lab)[0] * 255).astype(np.uint8).transpose(1, 2, 0)


# -----------------------------------------------------------------------------
# Files

class _InputError(UserError):
    """The input video cannot be read: a UserError (never an OSError, which atomic_write would take
    for a failure to write the output)."""


def _need_av():
    if av is None:
        raise UserError(f"a video needs PyAV, which is not installed ({INSTALL})")


def _open_input(path):
    """The input container and its first video stream; _InputError in one line when it has none."""
    _need_av()
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise _InputError(f"{path}: empty file (0 bytes), not a video")
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as e:
        raise _InputError(f"{path}: not a readable video ({_reason(e)})") from None
    if not container.streams.video:
        container.close()
        raise _InputError(f"{path}: no video stream in this file")
    return container, container.streams.video[0]


def _reason(error):
    text = getattr(error, "strerror", None) or str(error)
    return " ".join(str(text).split())[:150]


def colorize_video(colorizer, path, out_path, strength=TEMPORAL, inputs=(), progress=True):
    """Colorize the video at path into out_path (H.264, yuv420p, MP4): same size (an odd width or height
    gets one repeated column or row: yuv420p needs even sizes), frame rate and time base, the first
    audio stream copied. Frames are decoded, colorized (Colorizer.colorize), filtered (TemporalFilter)
    and encoded one at a time, so memory does not grow with the clip. Written to a temporary file
    beside out_path and renamed when complete. out_path is never one of path or inputs.
    Returns {"frames": n, "cuts": n, "audio": bool}. UserError in one line for a bad input."""
    _need_av()
    for p in (path, *inputs):
        if os.path.lexists(out_path) and same_file(out_path, p):
            raise UserError(f"{out_path}: the output is also an input ({p}), so nothing was written")
    check_writable_target(out_path, "output")
    source, vin = _open_input(path)
    try:
        make_folders(os.path.dirname(os.path.abspath(out_path)))
        stats = {}
        atomic_write(out_path, lambda f: _transcode(colorizer, path, source, vin, f, strength, progress, stats), "output")
        return stats
    finally:
        source.close()


def _transcode(colorizer, path, source, vin, f, strength, progress, stats):
    ain = source.streams.audio[0] if source.streams.audio else None
    W, H = vin.codec_context.width, vin.codec_context.height
    if not W or not H:
        raise _InputError(f"{path}: the video stream has no frame size")
    rate = vin.average_rate or vin.guessed_rate or 25
    out = av.open(f, "w", format="mp4")
    try:
        vout = out.add_stream("libx264", rate=rate)
        vout.width, vout.height, vout.pix_fmt = W + W % 2, H + H % 2, "yuv420p"
        vout.time_base = vin.time_base
        vout.codec_context.time_base = vin.time_base
        aout = out.add_stream_from_template(ain) if ain is not None else None
        filt, n, expected = TemporalFilter(strength), 0, vin.frames
        bar = tqdm(total=expected or None, desc=os.path.basename(path)[:30], unit="frame", leave=False,
                   dynamic_ncols=True, disable=not progress)
        next_pts = 0
        for frame in _decoded(path, source, vin, ain):
            if not isinstance(frame, av.VideoFrame):  # an audio packet: copied as it is
                if frame.dts is not None:
                    frame.stream = aout
                    out.mux(frame)
                continue
            rgb = frame.to_ndarray(format="rgb24")
            L, ab = frame_lab(colorizer, rgb)
            rgb = compose(L, filt(L, ab))
            if rgb.shape[:2] != (vout.height, vout.width):  # an odd size: one row or column repeated
                rgb = np.pad(rgb, ((0, vout.height - rgb.shape[0]), (0, vout.width - rgb.shape[1]), (0, 0)), mode="edge")
            new = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            new.pts = frame.pts if frame.pts is not None else next_pts
            next_pts = new.pts + 1
            new.time_base = vin.time_base
            out.mux(vout.encode(new.reformat(format="yuv420p")))
            n += 1
            bar.update()
        bar.close()
        out.mux(vout.encode(None))
    finally:
        out.close()
    if n == 0:
        raise _InputError(f"{path}: no frame could be decoded (an empty or damaged video)")
    if expected and n < expected:
        raise _InputError(f"{path}: truncated: {n} of its {expected} frames could be decoded")
    stats.update(frames=n, cuts=filt.cuts, audio=aout is not None)


def _decoded(path, source, vin, ain):
    """The video stream's decoded frames and the audio stream's packets, in file order; damaged data
    is an _InputError naming the file."""
    streams = [vin] + ([ain] if ain is not None else [])
    try:
        for packet in source.demux(streams):
            if packet.stream is vin:
                yield from packet.decode()
            else:
                yield packet
    except av.FFmpegError as e:
        raise _InputError(f"{path}: damaged video data ({_reason(e)})") from None


# -----------------------------------------------------------------------------
# Metrics of consistency in time (numpy only)

def flicker(frames_lab):
    """Mean |change of a| + |change of b| between consecutive frames, over the pixels whose L changes
    by less than STILL_L (where the picture holds still, colour should too), averaged over the pairs.
    frames_lab: an iterable of (H, W, 3) Lab frames. 0 for a clip whose colour never changes."""
    prev, values = None, []
    for lab in frames_lab:
        lab = np.asarray(lab, np.float64)
        if prev is not None:
            still = np.abs(lab[..., 0] - prev[..., 0]) < STILL_L
            if still.any():
                values.append(float(np.abs(lab[..., 1:] - prev[..., 1:]).sum(axis=2)[still].mean()))
        prev = lab
    return float(np.mean(values)) if values else float("nan")


def _js(p, q):
    """Jensen-Shannon divergence of two histograms (natural log, 0..ln 2)."""
    m = (p + q) / 2

    def kl(x):
        nz = x > 0
        return float((x[nz] * np.log(x[nz] / m[nz])).sum())
    return 0.5 * kl(p) + 0.5 * kl(q)


def cdc(frames_rgb, gaps=(1, 2, 4)):
    """Colour distribution consistency (TCVC, Lei and Chen 2019; ColorMNet): the Jensen-Shannon
    divergence of per-channel 256-bin RGB histograms between frames 1, 2 and 4 apart, averaged over
    the channels and the pairs, weighted 1/3 each gap. Lower is steadier; 0 for identical frames.
    frames_rgb: a sequence of (H, W, 3) uint8 frames (or floats in [0, 1])."""
    hists = []
    for rgb in frames_rgb:
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8:
            rgb = np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
        hists.append([np.bincount(rgb[..., c].ravel(), minlength=256) / rgb[..., c].size for c in range(3)])
    per_gap = []
    for k in gaps:
        pairs = [np.mean([_js(a[c], b[c]) for c in range(3)]) for a, b in zip(hists, hists[k:])]
        if pairs:
            per_gap.append(float(np.mean(pairs)))
    if not per_gap:
        raise ValueError(f"cdc needs at least {min(gaps) + 1} frames, got {len(hists)}")
    return float(np.mean(per_gap))
