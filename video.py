"""Colorize film: a video file is decoded frame by frame (PyAV), each frame colorized by the photo
pipeline (Colorizer.colorize), its colour (Lab ab) smoothed in time where the picture holds still,
and the frames encoded as H.264 with the audio stream copied.

    from colorizer import Colorizer
    from video import colorize_video
    colorize_video(Colorizer.load(), "reel.mp4", "reel_colour.mp4")

PyAV is optional (pip install -r requirements-video.txt): without it this module still imports,
and colorize_video says how to install it. The metrics at the end (flicker, cdc) are numpy only.
"""
import contextlib
import functools
import hashlib
import heapq
import itertools
import json
import os
import re
import shutil
import sys
import time
from fractions import Fraction

import numpy as np
from tqdm import tqdm

from files import UserError, atomic_write, check_writable_target, display_name, fit_name, make_folders, same_file
from hints import SIDECAR_SUFFIX, HintError, _parse_json, _read_small_file, parse_color
from images import IMG_EXTENSIONS, BadImageError, lab_to_rgb, load_image, rgb_to_L, rgb_to_lab, walk_files

try:
    import av
except ImportError:
    av = None

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")  # --infer takes these as film (any letter case)
TEMPORAL = 0.95       # default strength of the temporal filter of ab, 0..1 (0: every frame alone)
L_TOLERANCE = 3.0     # Lab L change (of the 5x5-averaged L) at which a pixel's memory of past colour falls to 1/e
CUT_THRESHOLD = 0.3   # a scene cut: L histograms (64 bins) of consecutive frames differ by more than this (total variation, 0..1)
MAX_PIXELS = 100_000_000  # a frame of a folder of frames is refused above this (the photos' guard)
FRAME_RATE = 25      # a folder of frames as one clip: frames per second of the film written
CHUNK_FRAMES = 64     # frames per resumable part: an interrupted film continues from the last finished part
PARTS_SUFFIX = ".parts"  # the work folder beside an output, .<name>.parts/, holds its finished parts
FILTER_STATE = "filter.npz"  # in the work folder: the temporal filter's state after the last finished part
LONG_FILM_PROBE = 3  # frames timed before a film's expected time is said ...
LONG_FILM_S = 600     # ... when it is more than this many seconds
COLOUR_LEVELS = 3.0   # a frame is colour when its RGB channels differ from their mean by more than this (of 255), on average
STILL_L = 2.0         # flicker counts the pixels whose L changes by less than this between frames
# The H.264 encoder's settings. Its defaults (crf 23, chroma quantised as coarsely as luma) re-add
# half the flicker the filter takes out: in a grainy film the luma-chosen motion vectors and the
# chroma residual's quantisation change from frame to frame. crf 18 is x264's "visually lossless";
# a chroma QP 12 below luma's keeps the colour we add as the filter left it (about 3x the file size).
X264_OPTIONS = {"crf": "18", "x264-params": "chroma-qp-offset=-12"}
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

    def state(self):
        """The filter's memory as arrays (for np.savez), so that a resumed film continues it exactly."""
        return {"cuts": np.int64(self.cuts), **{k: getattr(self, k) for k in ("L", "hist", "ab") if getattr(self, k) is not None}}

    def restore(self, state):
        """Continue from a state() (a dict or an np.load of one)."""
        self.cuts = int(state["cuts"])
        for k in ("L", "hist", "ab"):
            setattr(self, k, np.array(state[k]) if k in state else None)


def frame_lab(colorizer, rgb, hints=None):
    """An 8-bit (H, W, 3) frame -> (its own L (H, W), the colorizer's ab (H, W, 2)), in Lab units;
    hints: colour hints [(x, y, colour), ...] for this frame, or None."""
    L = rgb_to_L(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
    out = np.asarray((colorizer.colorize(rgb, hints=hints) if hints else colorizer.colorize(rgb)).convert("RGB"), np.float32) / 255
    ab = rgb_to_lab(out.transpose(2, 0, 1)[None])[0, 1:].transpose(1, 2, 0)
    return L, ab


def compose(L, ab):
    """L (H, W) and ab (H, W, 2) -> 8-bit RGB (H, W, 3)."""
    lab = np.concatenate([L[None, None], ab.transpose(2, 0, 1)[None]], axis=1)
    return np.round(lab_to_rgb(lab)[0] * 255).astype(np.uint8).transpose(1, 2, 0)


def read_clip_hints(path):
    """A clip's hints file, {"hints": [{"frame": 0, "x": 120, "y": 64, "color": "#b02020"}, ...]} (the
    photo format, each hint with the frame it is given on, counted from 0) -> ({frame: [(x, y, colour),
    ...]}, a digest of the file's bytes). UserError naming the file and the fault."""
    raw = _read_small_file(path)
    data = _parse_json(path, raw)
    items = data.get("hints") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise UserError(f'{path}: expected {{"hints": [{{"frame": 0, "x": 12, "y": 34, "color": "#rrggbb"}}, ...]}}')
    by_frame = {}
    for i, item in enumerate(items, 1):
        if not (isinstance(item, dict) and {"frame", "x", "y", "color"} <= item.keys()):
            raise UserError(f"{path}: hint {i}: expected an object with frame, x, y and color")
        frame = item["frame"]
        if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
            raise UserError(f"{path}: hint {i}: frame must be a frame number, 0 or more, got {frame!r}")
        try:
            parse_color(item["color"])
        except ValueError as e:
            raise UserError(f"{path}: hint {i}: {e}") from None
        by_frame.setdefault(frame, []).append((item["x"], item["y"], item["color"]))
    return by_frame, hashlib.sha256(raw).hexdigest()


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


def parts_folder(out_path):
    """The hidden work folder beside out_path that holds a film's finished chunks until it is whole:
    reel.mp4 -> .reel.mp4.parts/."""
    folder, name = os.path.split(os.path.abspath(out_path))
    return os.path.join(folder, fit_name("." + name, PARTS_SUFFIX))


def _part(work, k, kind):
    """Part k's video (kind "part", an MP4) or the input timestamps of its frames ("pts", a .npy)."""
    return os.path.join(work, f"{kind}_{k:06d}." + ("mp4" if kind == "part" else "npy"))


def colorize_video(colorizer, path, out_path, strength=TEMPORAL, inputs=(), progress=True, hints_path=None,
                   chunk_frames=CHUNK_FRAMES, frame_rate=FRAME_RATE):
    """Colorize the video at path into out_path (H.264, yuv420p, MP4): same size (an odd width or height
    gets one repeated column or row: yuv420p needs even sizes), frame rate and time base, the first
    audio stream copied. path may also be a folder of numbered frames (photo files, in the order of their
    names, frame_2 before frame_10), one clip at frame_rate frames per second. Frames are decoded,
    colorized (Colorizer.colorize), filtered (TemporalFilter) and encoded one at a time, so memory does
    not grow with the clip.

    Resumable: every chunk_frames frames are one small MP4 part in parts_folder(out_path), written all
    or nothing, then the temporal filter's state at its end (FILTER_STATE), under a manifest naming the input (size,
    modification time, frame count) and the settings. Run again after an interruption, the finished
    parts are kept (decoded past, not colorized again) and the filter continues from its saved state;
    parts of another input or other settings are discarded. When all frames are done, the parts are
    joined without re-encoding (audio copied from the input) into out_path, written to a temporary
    file and renamed, and the work folder is removed. out_path is never one of path or inputs.

    hints_path: a clip's hints file (read_clip_hints): a hint given on frame i holds from frame i to the
    next scene cut. Returns {"frames": n, "cuts": n, "audio": bool, "resumed_at": first frame colorized
    in this run}. UserError in one line for a bad input."""
    _need_av()
    for p in (path, *inputs):
        if os.path.lexists(out_path) and same_file(out_path, p):
            raise UserError(f"{out_path}: the output is also an input ({p}), so nothing was written")
    check_writable_target(out_path, "output")
    hints, hints_digest = read_clip_hints(hints_path) if hints_path else ({}, None)
    if hints and not getattr(colorizer, "takes_hints", True):
        raise UserError(f"{hints_path}: {getattr(colorizer, 'weights', 'this model')} takes no colour hints "
                        f"(trained without HINT_INPUT)")
    source = FrameFolder(path, frame_rate, getattr(colorizer, "max_pixels", MAX_PIXELS)) if os.path.isdir(path) \
        else VideoFile(path)
    try:
        make_folders(os.path.dirname(os.path.abspath(out_path)))
        work = parts_folder(out_path)
        manifest = {"input": os.path.abspath(path), **source.identity(), "strength": float(strength),
                    "chunk_frames": chunk_frames, "l_tolerance": L_TOLERANCE, "x264": X264_OPTIONS,
                    "cut_threshold": CUT_THRESHOLD, "weights": str(getattr(colorizer, "weights", None)),
                    "render_size": getattr(colorizer, "render_size", None),
                    "saturation": getattr(colorizer, "saturation", None), "hints": hints_digest,
                    "weights_mtime_ns": _mtime_ns(getattr(colorizer, "weights", None))}
        try:
            stats = _encode_parts(colorizer, source, work, manifest, hints, hints_path, progress)
        except _InputError:  # a bad input: nothing to resume
            shutil.rmtree(work, ignore_errors=True)
            raise
        audio = path if stats["audio"] else None
        atomic_write(out_path, lambda f: _join_parts(audio, work, stats.pop("parts"), f), "output")
        shutil.rmtree(work, ignore_errors=True)
        return stats
    finally:
        source.close()


def colorize_frame_folders(colorizer, folders, out_dir, strength=TEMPORAL, frame_rate=FRAME_RATE):
    """--infer FOLDER... --video: each folder of numbered frames is one clip, written as out_dir/<folder
    name>.mp4 at frame_rate (colorize_video), with the hints of <folder>.hints.json beside it when there
    is one. A folder that fails is reported by name and the others still run. Returns the number failed."""
    failed, n_ok = [], 0
    make_folders(out_dir)
    for folder in folders:
        clip = os.path.normpath(folder)
        try:
            if not os.path.isdir(clip):
                raise UserError(f"{folder}: not a folder (--video takes folders of frames; a video file needs no --video)")
            sidecar = clip + SIDECAR_SUFFIX
            colorize_video(colorizer, clip, os.path.join(out_dir, fit_name(os.path.basename(os.path.abspath(clip)), ".mp4")),
                           strength, inputs=folders, hints_path=sidecar if os.path.lexists(sidecar) else None,
                           frame_rate=frame_rate)
            n_ok += 1
        except UserError as e:
            failed.append(str(e))
    print(f"colorized {n_ok} of {len(folders)} folders of frames into {display_name(out_dir)}")
    if failed:
        print(f"{len(failed)} failed:", file=sys.stderr)
    for why in failed:
        print(f"failed: {display_name(why)}", file=sys.stderr)
    return len(failed)


class VideoFile:
    """A video file as colorize_video reads it: frame size, rate and time base, frame count (0 when the
    container does not say), whether it has audio, and its frames in order."""

    def __init__(self, path):
        self.path = path
        self.container, self.stream = _open_input(path)
        self.width, self.height = self.stream.codec_context.width, self.stream.codec_context.height
        if not self.width or not self.height:
            self.close()
            raise _InputError(f"{path}: the video stream has no frame size")
        self.rate = self.stream.average_rate or self.stream.guessed_rate or 25
        self.time_base, self.frame_count = self.stream.time_base, self.stream.frames
        self.has_audio = bool(self.container.streams.audio)

    def identity(self):
        st = os.stat(self.path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "frames": self.frame_count}

    def frames(self):
        """(pts, frame) in order; rgb(frame) is its (H, W, 3) uint8 picture (decoded only when asked)."""
        next_pts = 0
        for frame in _decoded(self.path, self.container, self.stream, None):
            pts = frame.pts if frame.pts is not None else next_pts
            next_pts = pts + 1
            yield pts, frame

    @staticmethod
    def rgb(frame):
        return frame.to_ndarray(format="rgb24")

    def close(self):
        self.container.close()


class FrameFolder:
    """A folder of numbered frames (photo files directly in it, in the order of their names, numbers
    compared as numbers) as one clip at rate frames per second, read like a VideoFile. Every frame
    must be readable and of the first one's size."""
    CLOCK = 90000  # ticks per second of its time base (MPEG's clock): any rate's frame times fit it

    def __init__(self, folder, rate, max_pixels=MAX_PIXELS):
        self.path, self.max_pixels, self.has_audio = folder, max_pixels, False
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 < rate <= 1000):
            raise UserError(f"--frame-rate must be a number of frames per second in (0, 1000], got {rate!r}")
        try:
            names = [n for n in os.listdir(folder) if n.lower().endswith(tuple(IMG_EXTENSIONS))
                     and os.path.isfile(os.path.join(folder, n))]
        except OSError as e:
            raise _InputError(f"{folder}: cannot read this folder of frames ({_reason(e)})") from None
        self.files = [os.path.join(folder, n) for n in sorted(names, key=natural_key)]
        if not self.files:
            raise _InputError(f"{folder}: no frames in this folder (photo files: {', '.join(sorted(IMG_EXTENSIONS))})")
        self.frame_count = len(self.files)
        self.rate = Fraction(rate).limit_denominator(1001)
        self.time_base = Fraction(1, self.CLOCK)
        self.height, self.width = self.rgb(self.files[0]).shape[:2]

    def identity(self):
        listing = [(os.path.basename(f), st.st_size, st.st_mtime_ns) for f, st in zip(self.files, map(os.stat, self.files))]
        return {"frames": self.frame_count, "rate": str(self.rate),
                "listing": hashlib.sha256(json.dumps(listing).encode()).hexdigest()}

    def frames(self):
        for i, f in enumerate(self.files):
            yield round(i * self.CLOCK / self.rate), f

    def rgb(self, path):
        try:
            image, _ = load_image(path, self.max_pixels)
        except BadImageError as e:
            raise _InputError(f"{e}; a clip needs every frame") from None
        rgb = np.round(image[..., :3] * 255).astype(np.uint8)
        if hasattr(self, "width") and rgb.shape[:2] != (self.height, self.width):
            raise _InputError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]}, unlike the {self.width}x{self.height} "
                              f"frames before it")
        return rgb

    def close(self):
        pass


def natural_key(path):
    """frame_2.png before frame_10.png: numbers in the name compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", os.path.basename(path))]


def is_colour(rgb):
    """Whether an 8-bit (H, W, 3) frame holds colour: its channels differ by more than compression
    noise (a gray film through a colour codec differs by a level or two)."""
    return float(np.abs(rgb.astype(np.int16) - rgb.mean(axis=2, keepdims=True)).mean()) > COLOUR_LEVELS


def _duration(seconds):
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m} min" if h else f"{m} min"


def _start_work_folder(work, manifest):
    """The number of chunks already finished in work for this manifest (0 for a new or stale folder,
    which is emptied and given the manifest)."""
    if os.path.lexists(work) and not os.path.isdir(work):
        raise UserError(f"{work}: the work folder of this film is not a folder; remove it and run again")
    try:
        with open(os.path.join(work, "manifest.json"), encoding="utf-8") as f:
            same = json.load(f) == json.loads(json.dumps(manifest))
    except (OSError, ValueError):
        same = False
    if not same:
        shutil.rmtree(work, ignore_errors=True)
        make_folders(work)
        text = json.dumps(manifest, indent=1).encode()
        atomic_write(os.path.join(work, "manifest.json"), lambda f: f.write(text), "film part")
        return 0
    try:  # the filter's state after the last finished part; parts after it are made again
        with np.load(os.path.join(work, FILTER_STATE)) as state:
            done = int(state["part"]) + 1
    except (OSError, ValueError, KeyError):
        done = 0
    if not all(os.path.isfile(_part(work, k, kind)) for k in range(done) for kind in ("part", "pts")):
        shutil.rmtree(work, ignore_errors=True)  # a part went missing: start over
        return _start_work_folder(work, manifest)
    return done


def _mtime_ns(path):
    try:
        return os.stat(path).st_mtime_ns
    except (OSError, TypeError, ValueError):
        return None


def _encode_parts(colorizer, source, work, manifest, hints, hints_path, progress):
    path, W, H = source.path, source.width, source.height
    chunk = manifest["chunk_frames"]
    done = _start_work_folder(work, manifest)
    filt, shot_start, expected = TemporalFilter(manifest["strength"]), 0, source.frame_count
    if done:
        with np.load(os.path.join(work, FILTER_STATE)) as state:
            filt.restore(state)
            shot_start = int(state["shot_start"])
    if done and progress:
        tqdm.write(display_name(f"{path}: resuming at frame {done * chunk}, after the {done} finished parts in {work}"))
    counted = [0]

    def frames():  # (index, pts, frame) of every decoded frame from chunk `done` on
        for pts, frame in source.frames():
            i = counted[0]
            counted[0] += 1
            if i >= done * chunk:
                yield i, pts, frame
    bar = tqdm(total=expected or None, initial=min(done * chunk, expected or done * chunk), desc=os.path.basename(path)[:30],
               unit="frame", leave=False, dynamic_ncols=True, disable=not progress)

    started = time.perf_counter()

    def colour(i, frame):
        nonlocal shot_start
        rgb = source.rgb(frame)
        if i == done * chunk and progress and is_colour(rgb):
            tqdm.write(display_name(f"{path}: its frames are in colour already; they are colorized from their "
                                    f"lightness, and their own colour is not kept"))
        if i == done * chunk + LONG_FILM_PROBE and progress and expected:
            each = (time.perf_counter() - started) / LONG_FILM_PROBE
            if each * (expected - i) > LONG_FILM_S:
                tqdm.write(display_name(f"{path}: {W}x{H}, {expected} frames at {each:.1f} s each here: about "
                                        f"{_duration(each * (expected - i))} to go (stop it any time: run the same "
                                        f"command again and it continues from the last finished part)"))
        L = rgb_to_L(rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255)[0, 0]
        if filt.hist is not None and is_cut(filt.hist, l_histogram(L)):
            shot_start = i  # the filter sees the same cut
        active = [h for f in sorted(hints) if shot_start <= f <= i for h in hints[f]]
        try:
            _, ab = frame_lab(colorizer, rgb, active or None)
        except HintError as e:  # a point outside the frame: the hints file's fault, said in one line
            raise UserError(f"{hints_path}: frame {i}: {e}") from None
        bar.update()
        return compose(L, filt(L, ab))

    it, k = frames(), done
    try:
        for first in it:
            pts = []
            group = itertools.chain([first], itertools.islice(it, chunk - 1))
            atomic_write(_part(work, k, "part"),
                         functools.partial(_encode_segment, group, colour, pts, W, H, source.rate, source.time_base),
                         "film part")
            atomic_write(_part(work, k, "pts"), lambda f, p=pts: np.save(f, np.int64(p)), "film part")
            state = {**filt.state(), "shot_start": np.int64(shot_start), "part": np.int64(k)}  # one file, overwritten
            atomic_write(os.path.join(work, FILTER_STATE), lambda f, s=state: np.savez(f, **s), "film part")
            k += 1
    finally:
        bar.close()
    n = counted[0]
    if n == 0:
        raise _InputError(f"{path}: no frame could be decoded (an empty or damaged video)")
    if expected and n < expected:
        raise _InputError(f"{path}: truncated: {n} of its {expected} frames could be decoded")
    if k * chunk < n:  # cannot happen for one input (the manifest names it); guards against a changed file
        raise _InputError(f"{path}: changed while it was colorized ({n} frames, {k} parts); run again")
    return {"frames": n, "cuts": filt.cuts, "audio": source.has_audio, "resumed_at": done * chunk, "parts": k}


def _encode_segment(group, colour, pts_out, W, H, rate, time_base, f):
    """Encode the frames of group [(index, pts, frame)] as one H.264 MP4 into the open file f, each
    coloured by colour(index, frame); their pts appended to pts_out."""
    out = av.open(f, "w", format="mp4")
    try:
        vout = out.add_stream("libx264", rate=rate, options=X264_OPTIONS)
        vout.width, vout.height, vout.pix_fmt = W + W % 2, H + H % 2, "yuv420p"
        vout.time_base = time_base
        vout.codec_context.time_base = time_base
        for i, pts, frame in group:
            rgb = colour(i, frame)
            if rgb.shape[:2] != (vout.height, vout.width):  # an odd size: one row or column repeated
                rgb = np.pad(rgb, ((0, vout.height - rgb.shape[0]), (0, vout.width - rgb.shape[1]), (0, 0)), mode="edge")
            new = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            new.pts, new.time_base = pts, time_base
            out.mux(vout.encode(new.reformat(format="yuv420p")))
            pts_out.append(pts)
        out.mux(vout.encode(None))
    finally:
        out.close()


def _part_packets(work, n_parts):
    """The video packets of the parts in order, with the pts each frame had in the input (the MP4
    muxer shifts a part's timestamps by its encoder delay)."""
    for k in range(n_parts):
        first = int(np.load(_part(work, k, "pts")).min())
        with av.open(_part(work, k, "part")) as part:
            packets = [p for p in part.demux(part.streams.video[0]) if p.size and p.pts is not None]
            shift = first - min(p.pts for p in packets)
            for p in packets:
                p.pts, p.dts = p.pts + shift, p.dts + shift
            yield from packets


def _join_parts(audio_path, work, n_parts, f):
    """The parts in work joined into one MP4 in the open file f, without re-encoding, with the first
    audio stream of the file at audio_path (None: no audio) copied; packets interleaved by time."""
    out = av.open(f, "w", format="mp4")
    try:
        with av.open(_part(work, 0, "part")) as first, \
                (av.open(os.fspath(audio_path)) if audio_path else contextlib.nullcontext()) as src:
            template = first.streams.video[0]
            vout = out.add_stream_from_template(template)
            vout.time_base = template.time_base
            ain = src.streams.audio[0] if src is not None and src.streams.audio else None
            aout = out.add_stream_from_template(ain) if ain is not None else None
            audio = (p for p in src.demux(ain) if p.dts is not None) if ain is not None else ()
            for p in heapq.merge(_part_packets(work, n_parts), audio, key=lambda p: p.dts * p.time_base):
                p.stream = aout if p.stream.type == "audio" else vout
                out.mux(p)
    finally:
        out.close()


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


def js_divergence(p, q):
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
        pairs = [np.mean([js_divergence(a[c], b[c]) for c in range(3)]) for a, b in zip(hists, hists[k:])]
        if pairs:
            per_gap.append(float(np.mean(pairs)))
    if not per_gap:
        raise ValueError(f"cdc needs at least {min(gaps) + 1} frames, got {len(hists)}")
    return float(np.mean(per_gap))
