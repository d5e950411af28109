"""Colour hints: "this point of the photo is this colour" (Zhang et al. 2017, "Real-Time User-Guided
Image Colorization with Learned Deep Priors").

A hint is (x, y, colour): a point in the photo's own pixels and a colour, "#rrggbb" or (r, g, b)
in 0..255. Only the colour's ab in Lab counts; the photo keeps its own lightness. A hint-capable
generator gets three planes beside L: the hint's ab over a small square around each point, and a
mask that is 1 there. No hints is all zeros, which is the automatic colorizer.

A hints file (--hints FILE.json, or photo.hints.json beside photo.jpg) holds

    {"hints": [{"x": 120, "y": 64, "color": "#b02020"}, {"x": 30, "y": 200, "color": "#3060c0"}]}
"""
import json
import numbers
import os
import re
import reprlib
import stat

import numpy as np

from files import UserError, describe_os_error
from images import AB_SCALE, photo_to_render, rgb_to_lab

POINT_SIDE = 3          # a user's point hint covers a square of this side, in the pixels the network sees
MAX_TRAIN_HINTS = 50    # training never draws more hints than this for one image
SIDECAR_SUFFIX = ".hints.json"
HINT_CHANNELS = 3      # the generator's hint input beside L: hint a, hint b, and a mask that is 1 where a hint is
MAX_HINTS_BYTES = 1_000_000  # a hints file is refused above this size (a thousand hints take about 50 kB)
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def short_repr(value):
    """Any value in one short line, however long or deeply nested (for messages)."""
    return _REPR.repr(value)


class HintError(ValueError):
    """A hint that cannot be used: a bad colour, a point outside the photo, a malformed hints file."""


def parse_color(color):
    """'#rrggbb', 'rgb(r, g, b)' / 'rgba(r, g, b, a)' (what a browser's colour picker sends) or
    (r, g, b) (a tuple, list or array), with values in 0..255 -> (r, g, b) floats in [0, 1]."""
    if isinstance(color, np.ndarray) and color.ndim == 1:  # a pixel of an image array: (r, g, b)
        color = color.tolist()
    if isinstance(color, str):
        m = re.fullmatch(r"#([0-9a-fA-F]{6})", color.strip())
        if m:
            return tuple(int(m.group(1)[i:i + 2], 16) / 255 for i in (0, 2, 4))
        number = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"  # what float() reads, no exponent: 0..255 never needs one
        m = re.fullmatch(rf"rgba?\({number},{number},{number}(,{number})?\)", color.strip())
        if m and all(float(v) <= 255 for v in m.groups()[:3]):
            return tuple(float(v) / 255 for v in m.groups()[:3])
    elif (isinstance(color, (tuple, list)) and len(color) == 3
          and all(isinstance(c, numbers.Real) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
        return tuple(float(c) / 255 for c in color)
    raise HintError(f"colour must be '#rrggbb' or (r, g, b) in 0..255, got {short_repr(color)}")


def hex_color(rgb):
    """(r, g, b) floats in [0, 1] -> '#rrggbb'."""
    return "#" + "".join(f"{round(min(max(c, 0.0), 1.0) * 255):02x}" for c in rgb)


def check_hints(hints, W, H):
    """[(x, y, colour), ...] on a W x H photo -> [(x, y, (r, g, b)), ...]; HintError naming the bad hint."""
    if isinstance(hints, (str, bytes)) or not hasattr(hints, "__iter__"):
        raise HintError(f"hints must be a list of (x, y, colour), got {short_repr(hints)}")
    checked = []
    for i, hint in enumerate(hints, 1):
        try:
            x, y, color = hint
        except (TypeError, ValueError):
            raise HintError(f"hint {i}: expected (x, y, colour), got {short_repr(hint)}") from None
        for name, v, n in (("x", x, W), ("y", y, H)):
            # numbers.Real: NumPy scalars (np.int64, np.float32) count; True and False do not; NaN fails the range
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < n:
                raise HintError(f"hint {i}: {name} must be a pixel coordinate in [0, {n}) of this "
                                f"{W}x{H} photo, got {short_repr(v)}")
        try:
            checked.append((x, y, parse_color(color)))
        except HintError as e:
            raise HintError(f"hint {i}: {e}") from None
    return checked


def square(r, c, side, h, w):
    """(rows, cols) slices of the side x side square centred on pixel (r, c), cut at the borders of h x w."""
    r0, c0 = r - (side - 1) // 2, c - (side - 1) // 2
    return slice(max(0, r0), min(h, r0 + side)), slice(max(0, c0), min(w, c0 + side))


def paint_hints(planes, hints):
    """Write hints into the generator's hint input planes (B, 3, h, w), the one place they are
    encoded: each (image, rows, cols, a, b) sets its square's ab (network scale) and the mask to 1
    there. A later hint covers an earlier one where they overlap."""
    for i, rows, cols, a, b in hints:
        planes[i, 0, rows, cols] = a
        planes[i, 1, rows, cols] = b
        planes[i, 2, rows, cols] = 1.0
    return planes


def hint_planes(hints, W, H, w, h, side=POINT_SIDE):
    """The generator's hint input, a float32 array (1, 3, h, w), for hints on a W x H photo that the network sees at
    w x h: each point becomes a side x side square (cut at the borders) of its colour's ab, with the
    mask 1 there. A later hint covers an earlier one where they overlap."""
    hints = check_hints(hints, W, H)
    planes = np.zeros((1, HINT_CHANNELS, h, w), np.float32)
    if not hints:
        return planes
    rgb = np.array([c for _, _, c in hints], np.float32).T[None, :, :, None]  # (1, 3, n, 1)
    ab = (rgb_to_lab(rgb)[0, 1:, :, 0] / AB_SCALE).T.tolist()                # n x (a, b)
    return paint_hints(planes, [(0, *square(*photo_to_render(x, y, W, H, w, h), side, h, w), a, b)
                                for (x, y, _), (a, b) in zip(hints, ab)])


# -----------------------------------------------------------------------------
# Hints files

def sidecar_path(image_path):
    """photo.jpg -> photo.hints.json, the hints file --infer picks up beside each photo."""
    return os.path.splitext(image_path)[0] + SIDECAR_SUFFIX


def read_hints(path):
    """The hints of a JSON hints file as [(x, y, colour), ...]; UserError naming the file and the fault.
    Only a regular file of at most MAX_HINTS_BYTES is read: a pipe, device or socket is refused
    without being opened for blocking reads. Coordinates are checked against the photo when it is
    colorized."""
    data = _parse_json(path, _read_small_file(path))
    items = data.get("hints") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise UserError(f'{path}: expected {{"hints": [{{"x": 12, "y": 34, "color": "#rrggbb"}}, ...]}}')
    hints = []
    for i, item in enumerate(items, 1):
        if not (isinstance(item, dict) and {"x", "y", "color"} <= item.keys()):
            raise UserError(f"{path}: hint {i}: expected an object with x, y and color, got {short_repr(item)}")
        try:
            parse_color(item["color"])
        except HintError as e:
            raise UserError(f"{path}: hint {i}: {e}") from None
        hints.append((item["x"], item["y"], item["color"]))
    return hints


def _read_small_file(path):
    """The bytes of the hints file path; UserError unless it is a regular file of at most MAX_HINTS_BYTES."""
    limit = f"the limit for a hints file is {MAX_HINTS_BYTES // 1_000_000} MB"
    try:
        mode = os.stat(path).st_mode  # before opening: opening a FIFO blocks until a writer comes
        if stat.S_ISDIR(mode):
            raise UserError(f"{path}: is a folder, not a hints file")
        if not stat.S_ISREG(mode):
            raise UserError(f"{path}: not a regular file (a pipe, socket or device), so not read as a hints file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # swapped for a FIFO since: never blocks
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{path}: not a regular file (a pipe, socket or device), so not read as a hints file")
            if st.st_size > MAX_HINTS_BYTES:
                raise UserError(f"{path}: {st.st_size} bytes is too large for a hints file ({limit})")
            raw = f.read(MAX_HINTS_BYTES + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot read the hints file: {describe_os_error(e)}") from None
    if len(raw) > MAX_HINTS_BYTES:  # it grew since fstat
        raise UserError(f"{path}: over {MAX_HINTS_BYTES} bytes, too large for a hints file ({limit})")
    return raw


def _parse_json(path, raw):
    """The JSON value of the bytes raw read from the hints file path; UserError naming the file."""
    try:
        # json decodes bytes as UTF-8 with or without a BOM (Notepad writes one), or UTF-16 / UTF-32
        # (Notepad's "Unicode"), telling them apart by the first bytes
        return json.loads(raw)
    except RecursionError:  # the C decoder nests one Python frame per level
        raise UserError(f"{path}: not a valid hints file: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{path}: not a valid JSON hints file: {e}") from None


def hints_json(hints):
    """[(x, y, colour), ...] as the text of a hints file (colours written as '#rrggbb')."""
    return json.dumps({"hints": [{"x": x, "y": y, "color": hex_color(parse_color(c))} for x, y, c in hints]},
                      indent=1)
