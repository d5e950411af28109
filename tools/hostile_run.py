"""A hostile run (issue 20, round 5): about 130 inputs a hostile user would try, beyond the classes of
the issue, each run and judged CLEAN or not automatically.

    python tools/hostile_run.py                   # every case (about 8 minutes on one core)
    python tools/hostile_run.py --only hints      # the cases whose name holds "hints"
    python tools/hostile_run.py --list            # the case names

CLEAN: the exit code expected (non-zero when something was refused); stderr holds nothing but
one-line messages ("error: ...", "failed: ...", "warning: ...") and progress bars: no traceback,
no "unexpected error", no raw library warning; the file or value appears in the message; no file that
existed before changed (inputs, earlier outputs), no temporary or partial file left, TMPDIR left empty;
finished within its timeout; at most MAX_RSS_MB resident. Command-line cases run
`python colorize_base.py ... --threads 1` or `python soup.py` in a subprocess; API cases run in this
process. Each case gets a fresh folder; the tiny generator of tests/conftest.py stands in for a model.
"""
import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import pickle
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["OMP_NUM_THREADS"] = "1"

from conftest import photo, tiny_checkpoint  # noqa: E402

MAX_RSS_MB = 3000
TIMEOUT = 120
# what stderr may hold: our one-line messages, the "N failed:" heading, tqdm's bars
TQDM = re.compile(r".*: +(\d+%\||\d+[a-z/]* \[)")
ALLOWED = re.compile(r"(error|failed|warning): |\d+ failed:$|resuming at frame \d+$|removed |" + TQDM.pattern)
TMP_LEFT = re.compile(r"\..+\.tmp\d+|.*\.parts|.*\.partial|tmp[\w-]{6,}")

CASES = []


def case(name, accepted=None):
    """Register a case: fn(folder) -> list of problems ([] is clean). accepted: why an unclean
    result is by design (said in the report, counted apart)."""
    def add(fn):
        CASES.append((name, fn, accepted))
        return fn
    return add


# -----------------------------------------------------------------------------
# Judging

def snapshot(folder):
    """{path: sha1 of its bytes, or its kind} for everything under folder (links not followed)."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for f in files + dirs:
            p = os.path.join(root, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    found[p] = hashlib.sha1(fh.read()).hexdigest()
            else:
                found[p] = "link" if os.path.islink(p) else "dir" if os.path.isdir(p) else "other"
    return found


def leftovers(folder, before):
    """Problems: files that changed or vanished, temporaries left, anything left in TMPDIR."""
    after = snapshot(folder)
    problems = [f"changed or removed: {os.path.relpath(p, folder)}" for p, h in before.items()
                if after.get(p) != h and "/tmp" not in p[len(str(folder)):]]
    problems += [f"temporary left: {os.path.relpath(p, folder)}" for p in after
                 if p not in before and TMP_LEFT.fullmatch(os.path.basename(p)) and "/tmp/" not in p[len(str(folder)):]]
    tmpdir = os.path.join(folder, "tmp")
    # .ses: onnxruntime's telemetry session file, written when it is imported and reused by every later run: not ours
    left = [f for f in os.listdir(tmpdir) if f != ".ses"] if os.path.isdir(tmpdir) else []
    if left:
        problems.append(f"left in TMPDIR: {left[:3]}")
    return problems


def judge_stderr(err, says, rc):
    """Problems with stderr: a traceback, a line that is not one of ours, the fragments missing."""
    err = err.replace("\x1b[A", "")  # tqdm moves up to redraw a second bar (the frames of a film)
    lines = [line.strip() for line in re.split(r"[\r\n]", err) if line.strip()]
    problems = []
    if "Traceback" in err or "unexpected error" in err:
        problems.append("traceback or 'unexpected error': " + next((x for x in lines if "rror" in x), lines[-1])[:200])
    stray = [line for line in lines if not ALLOWED.match(line)]
    if stray and not problems:
        problems.append(f"{len(stray)} stray stderr line(s): {stray[0][:160]}")
    if sum(line.startswith("error: ") for line in lines) > 1:
        problems.append("more than one error line")
    said = "\n".join(line for line in lines if ALLOWED.match(line) and not TQDM.match(line))
    for fragment in says:
        if fragment not in said:
            problems.append(f"message lacks {fragment!r}: {said[-200:]!r}")
    if rc not in (0, None) and not said and not problems:
        problems.append("refused without a message")
    return problems


def run(folder, *args, rc=0, says=(), program="colorize_base.py", env=None, cwd=None, timeout=TIMEOUT, stdout_says=(),
        threads=True):
    """Run the real command line in a subprocess and judge it; returns the list of problems."""
    tmpdir = os.path.join(folder, "tmp")
    os.makedirs(tmpdir, exist_ok=True)
    before = snapshot(folder)
    environ = {**os.environ, "TMPDIR": tmpdir, **(env or {})}
    environ = {k: v for k, v in environ.items() if v is not None}
    script = program if os.path.isabs(program) else str(REPO / program)
    argv = [sys.executable, script, *(["--threads", "1"] if threads and program == "colorize_base.py" else []), *map(str, args)]
    rss_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ, cwd=cwd or folder)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return [f"hung: killed after {timeout} s"]
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, kB
    rss = rss / 1024 if rss > rss_before else 0  # this one's, when it is the largest
    out, err = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    problems = []
    if (rc == "nonzero" and proc.returncode == 0) or (rc != "nonzero" and proc.returncode != rc):
        problems.append(f"exit code {proc.returncode}, expected {rc}")
    problems += judge_stderr(err, says, proc.returncode)
    problems += [f"stdout lacks {s!r}: {out[-150:]!r}" for s in stdout_says if s not in out]
    problems += leftovers(folder, before)
    if rss > MAX_RSS_MB:
        problems.append(f"resident memory {rss:.0f} MB")
    run.last = (proc.returncode, out, err, time.time() - t0)
    return problems


def api(call, refused=None, says=(), check=None):
    """Run call() in this process. refused: the exception class expected (None: it must work);
    its message must be one line with each fragment. check(result) -> a problem or None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                result = call()
        except Exception as e:
            text = str(e)
            if refused is None or not isinstance(e, refused):
                return [f"raised {type(e).__name__}: {text[:200]}"]
            problems = [f"message lacks {s!r}: {text[:200]!r}" for s in says if s not in text]
            return problems + (["message is not one line"] if "\n" in text.strip() else [])
    problems = [f"raw warning: {w.category.__name__}: {str(w.message)[:150]}" for w in caught]
    problems += [f"stderr: {line[:150]}" for line in err.getvalue().splitlines() if not ALLOWED.match(line)]
    if refused is not None:
        return problems + [f"accepted, expected {refused.__name__}"]
    problem = check(result) if check else None
    return problems + ([problem] if problem else [])


# -----------------------------------------------------------------------------
# Inputs

def png(path, w=24, h=20, seed=0, **kw):
    Image.fromarray(photo(w, h, seed)).save(path, **kw)
    return path


def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(path, w, h, rows=None, depth=8, colour=0):
    """A PNG written by hand (any declared size, even 0)."""
    rows = rows if rows is not None else b"".join(b"\x00" + bytes(w) for _ in range(h))
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
                           + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def encoded(fmt, img=None, **kw):
    buf = io.BytesIO()
    (img or Image.fromarray(photo(32, 24, 3))).save(buf, fmt, **kw)
    return buf.getvalue()


def out_size(path):
    with Image.open(path) as im:
        return im.size


def made(folder, name, size):
    """A problem unless folder/out/name exists with that size."""
    p = os.path.join(folder, "out", name)
    if not os.path.exists(p):
        return [f"no output {name}"]
    return [] if out_size(p) == size else [f"{name} is {out_size(p)}, expected {size}"]


WEIGHTS = {}


def weights(kind="plain"):
    """A tiny generator file, made once per run: plain, or hints (HINT_INPUT)."""
    if kind not in WEIGHTS:
        path = os.path.join(ROOT, f"tiny_{kind}.pt")
        tiny_checkpoint(path, **({"HINT_INPUT": True} if kind == "hints" else {}))
        WEIGHTS[kind] = path
    return WEIGHTS[kind]


def infer(d, *inputs, rc=0, says=(), extra=(), **kw):
    return run(d, "--infer", *inputs, "--weights", weights(kw.pop("kind", "plain")), "--out", d / "out", *extra,
               rc=rc, says=says, **kw)


# -----------------------------------------------------------------------------
# Odd image files: each is colorized at its own size, or refused by name (exit 1), the rest still done

def image_case(name, write, size=None, says=(), accepted=None):
    """write(path) makes the file; size: the output's expected size, or None when it must be refused."""
    @case(f"image {name}", accepted)
    def _(d):
        fname = write(d)
        png(d / "good.png")
        problems = infer(d, d / fname, d / "good.png", rc=0 if size else 1, says=says or (() if size else (fname,)))
        problems += made(d, "good.png", (24, 20))
        if size:
            problems += made(d, os.path.splitext(fname)[0] + ".png", size)
        return problems


def _save(name, img, **kw):
    def write(d):
        img().save(d / name, **kw)
        return name
    return write


def _bytes(name, data):
    def write(d):
        (d / name).write_bytes(data() if callable(data) else data)
        return name
    return write


def _gray16():
    return Image.fromarray((np.arange(30 * 20).reshape(20, 30) * 100).astype(np.uint16))


def _frames(n=3, w=28, h=20):
    return [Image.fromarray(photo(w, h, s)) for s in range(n)]


image_case("1x1 png", _save("one.png", lambda: Image.new("L", (1, 1), 90)), (1, 1))
image_case("1x300 png", _save("tall.png", lambda: Image.fromarray(photo(1, 300))), (1, 300))
image_case("300x1 png", _save("wide.png", lambda: Image.fromarray(photo(300, 1))), (300, 1))
image_case("20000x2 aspect", _save("strip.png", lambda: Image.new("L", (20000, 2), 100)), (20000, 2))
image_case("2x20000 aspect", _save("pole.png", lambda: Image.new("L", (2, 20000), 100)), (2, 20000))
image_case("width 0 png", lambda d: os.path.basename(raw_png(d / "zero_w.png", 0, 10, rows=b"\x00" * 10)))
image_case("height 0 png", lambda d: os.path.basename(raw_png(d / "zero_h.png", 10, 0, rows=b"")))
image_case("png declaring 2**31-1 wide", lambda d: os.path.basename(raw_png(d / "vast.png", 2 ** 31 - 1, 1, rows=b"\x00")))
image_case("16-bit gray tiff", _save("g16.tif", _gray16), (30, 20))
image_case("32-bit int tiff", _save("i32.tif", lambda: _gray16().convert("I")), (30, 20))
image_case("float tiff in [0,1]", _save("f.tif", lambda: Image.fromarray(np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30))),
           (30, 20))
image_case("bilevel mode 1", _save("bw.png", lambda: Image.fromarray(photo(30, 20)).convert("1")), (30, 20))
image_case("LA webp", _save("la.webp", lambda: Image.fromarray(photo(30, 20)).convert("LA"), lossless=True), (30, 20))
image_case("P with transparency gif", _save("pt.gif", lambda: Image.fromarray(photo(30, 20)).quantize(8), transparency=2), (30, 20))
image_case("RGBA fully transparent", _save("clear.png", lambda: Image.new("RGBA", (30, 20), (10, 20, 30, 0))), (30, 20))
image_case("CMYK tiff", _save("cmyk.tif", lambda: Image.fromarray(photo(30, 20)).convert("CMYK")), (30, 20))
image_case("CMYK jpeg, Adobe", _save("adobe.jpg", lambda: Image.fromarray(photo(30, 20)).convert("CMYK"), quality=90), (30, 20))
image_case("LAB tiff", _save("lab.tif", lambda: Image.fromarray(photo(30, 20)).convert("LAB")), (30, 20))
image_case("YCbCr jpeg", _save("ycc.jpg", lambda: Image.fromarray(photo(30, 20)).convert("YCbCr")), (30, 20))
image_case("progressive jpeg", _save("prog.jpg", lambda: Image.fromarray(photo(30, 20)), progressive=True), (30, 20))
image_case("interlaced (Adam7) png", lambda d: _adam7(d), (8, 8))
image_case("bmp 1-bit", _save("one.bmp", lambda: Image.fromarray(photo(30, 20)).convert("1")), (30, 20))
image_case("bmp RLE8", _bytes("rle.bmp", lambda: _rle_bmp()), (4, 2))
image_case("animated gif", _save("anim.gif", lambda: _frames()[0], save_all=True, append_images=_frames()[1:]), (28, 20),
           says=("anim.gif", "first"))
image_case("animated png (APNG)", _save("anim.png", lambda: _frames()[0], save_all=True, append_images=_frames()[1:]), (28, 20),
           says=("anim.png", "first"))
image_case("multi-page tiff", _save("pages.tif", lambda: _frames()[0], save_all=True, append_images=_frames()[1:]), (28, 20),
           says=("pages.tif", "first"))
image_case("animated webp", _save("anim.webp", lambda: _frames()[0], save_all=True, append_images=_frames()[1:]), (28, 20),
           says=("anim.webp", "first"))
image_case("jpeg cut after SOI", _bytes("soi.jpg", lambda: encoded("JPEG")[:2]))
image_case("jpeg cut in its header", _bytes("hdr.jpg", lambda: encoded("JPEG")[:120]))
image_case("jpeg cut after 3/4", _bytes("q3.jpg", lambda: encoded("JPEG")[:len(encoded("JPEG")) * 3 // 4]))
image_case("png signature only", _bytes("sig.png", b"\x89PNG\r\n\x1a\n"))
image_case("png cut in IHDR", _bytes("ihdr.png", lambda: encoded("PNG")[:20]))
image_case("png cut in IDAT", _bytes("idat.png", lambda: encoded("PNG")[:len(encoded("PNG")) // 2]))
image_case("png without IEND", _bytes("noend.png", lambda: encoded("PNG")[:-12]), (32, 24))
image_case("png with a bad IDAT crc (pixels intact: read, as Pillow reads it)", _bytes("crc.png", lambda: _bad_crc()), (32, 24))
image_case("gif cut in half", _bytes("half.gif", lambda: encoded("GIF")[:len(encoded("GIF")) // 2]))
image_case("bmp cut in half", _bytes("half.bmp", lambda: encoded("BMP")[:len(encoded("BMP")) // 2]))
image_case("tiff cut in half", _bytes("half.tif", lambda: encoded("TIFF")[:len(encoded("TIFF")) // 2]))
image_case("webp cut in half", _bytes("half.webp", lambda: encoded("WEBP")[:len(encoded("WEBP")) // 2]))
image_case("png named .jpg", _bytes("really_png.jpg", lambda: encoded("PNG")), (32, 24))
image_case("jpeg named .tiff", _bytes("really_jpeg.tiff", lambda: encoded("JPEG")), (32, 24))
image_case("uppercase .PNG", _bytes("UP.PNG", lambda: encoded("PNG")), (32, 24))
image_case("mixed case .JpEg", _bytes("mixed.JpEg", lambda: encoded("JPEG")), (32, 24))
image_case("no extension, named", _bytes("noext", lambda: encoded("PNG")), (32, 24))
image_case("pdf named .png", _bytes("doc.png", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"))
image_case("svg named .png", _bytes("vector.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>'))
image_case("ico file as .png", _bytes("icon.png", lambda: encoded("ICO", Image.fromarray(photo(16, 16)))), (16, 16))
image_case("random bytes .webp", _bytes("noise.webp", lambda: np.random.default_rng(1).bytes(3000)))
image_case("all-zero bytes .tif", _bytes("zeros.tif", bytes(4096)))


def _adam7(d):
    """An interlaced 8x8 gray PNG: its 7 passes of Adam7, written by hand (Pillow writes no interlaced PNG)."""
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    rows = b""
    for x0, y0, dx, dy in passes:
        w, h = len(range(x0, 8, dx)), len(range(y0, 8, dy))
        rows += b"".join(b"\x00" + bytes([40 + 20 * i] * w) for i in range(h)) if w and h else b""
    data = chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 1)) + chunk(b"IDAT", zlib.compress(rows))
    (d / "adam7.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data + chunk(b"IEND", b""))
    return "adam7.png"


def _rle_bmp():
    """A 4x2 8-bit RLE BMP (compression 1), by hand."""
    pixels = b"\x04\x10\x00\x00\x04\x80\x00\x01"  # row: 4 x colour 16, end of line; 4 x colour 128, end of bitmap
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    header = struct.pack("<IiiHHIIiiII", 40, 4, 2, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(header) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + palette + pixels


def _bad_crc():
    data = bytearray(encoded("PNG"))
    i = data.index(b"IDAT")
    n = struct.unpack(">I", data[i - 4:i])[0]
    data[i + 4 + n] ^= 0xFF  # the IDAT's CRC
    return bytes(data)


# -----------------------------------------------------------------------------
# Paths

@case("path symlink loop")
def _(d):
    os.symlink(d / "b.png", d / "a.png")
    os.symlink(d / "a.png", d / "b.png")
    png(d / "good.png")
    return infer(d, d / "a.png", d / "good.png", rc=1, says=("a.png",)) + made(d, "good.png", (24, 20))


@case("path symlink loop inside a folder")
def _(d):
    (d / "album").mkdir()
    os.symlink(d / "album" / "y.png", d / "album" / "x.png")
    os.symlink(d / "album" / "x.png", d / "album" / "y.png")
    png(d / "album" / "good.png")
    return infer(d, d / "album", rc=1, says=("x.png", "y.png")) + made(d, "good.png", (24, 20))


@case("path dangling symlink")
def _(d):
    os.symlink(d / "gone.png", d / "dangling.png")
    png(d / "good.png")
    return infer(d, d / "dangling.png", d / "good.png", rc=1, says=("dangling.png",))


@case("path with a newline and spaces")
def _(d):
    png(d / "two\nlines  and spaces .png")
    return infer(d, d / "two\nlines  and spaces .png", stdout_says=("colorized 1 of 1",)) + \
        made(d, "two\nlines  and spaces .png", (24, 20))


@case("path literal glob characters")
def _(d):
    png(d / "[ab]*?.png")
    return infer(d, d / "[ab]*?.png") + made(d, "[ab]*?.png", (24, 20))


@case("path glob matching nothing, among good")
def _(d):
    png(d / "good.png")
    return infer(d, str(d / "nothing*.png"), d / "good.png", rc=1, says=("nothing*.png",)) + made(d, "good.png", (24, 20))


@case("path glob matching nothing, alone")
def _(d):
    return infer(d, str(d / "nothing*.png"), rc="nonzero", says=("nothing*.png",))


@case("path the same input twice")
def _(d):
    png(d / "a.png")
    return infer(d, d / "a.png", d / "a.png", d / "." / "a.png", stdout_says=("colorized 1 of 1",))


@case("path a file and its folder")
def _(d):
    (d / "album").mkdir()
    png(d / "album" / "a.png")
    return infer(d, d / "album" / "a.png", d / "album", stdout_says=("colorized 1 of 1",))


@case("path --out is a file")
def _(d):
    png(d / "a.png")
    (d / "out").write_text("keep me")
    return infer(d, d / "a.png", rc=2, says=("out",))


@case("path --out under a file")
def _(d):
    png(d / "a.png")
    (d / "file").write_text("keep me")
    return run(d, "--infer", d / "a.png", "--weights", weights(), "--out", d / "file" / "sub", rc=2, says=("file",))


@case("path --out is an existing output name (replaced: it is an output)", accepted="an earlier run's output in --out is "
      "replaced by design (atomically): --infer is rerun to refresh outputs; inputs are never written over")
def _(d):
    png(d / "a.png")
    (d / "out").mkdir()
    (d / "out" / "a.png").write_text("an earlier output")
    return infer(d, d / "a.png")


@case("path output name is an input in --out")
def _(d):
    (d / "out").mkdir()
    png(d / "out" / "a.png")
    return infer(d, d / "out" / "a.png") + made(d, "a_1.png", (24, 20))


@case("path input named .png that is a folder, explicit")
def _(d):
    (d / "dir.png").mkdir()
    png(d / "dir.png" / "inner.png")
    return infer(d, d / "dir.png") + made(d, "inner.png", (24, 20))


@case("path a character device as input")
def _(d):
    png(d / "good.png")
    return infer(d, "/dev/null", d / "good.png", rc=1, says=("/dev/null",))


@case("path /proc file as input")
def _(d):
    png(d / "good.png")
    return infer(d, "/proc/self/status", d / "good.png", rc=1, says=("/proc/self/status",))


@case("path --out a dangling symlink")
def _(d):
    png(d / "a.png")
    os.symlink(d / "nowhere", d / "out")
    return infer(d, d / "a.png", rc="nonzero", says=("out",))


@case("path a relative --out in a deleted working folder")
def _(d):
    png(d / "a.png")
    gone = str(d / "gone")
    script = (f"import os, subprocess, sys; os.mkdir({gone!r}); os.chdir({gone!r}); os.rmdir({gone!r}); "
              f"sys.exit(subprocess.call([sys.executable, {str(REPO / 'colorize_base.py')!r}, '--infer', {str(d / 'a.png')!r}, "
              f"'--weights', {weights()!r}, '--out', 'rel_out', '--threads', '1']))")
    (d / "run.py").write_text(script)
    return run(d, program=str(d / "run.py"), rc="nonzero", says=("rel_out",))


# -----------------------------------------------------------------------------
# Hints files (with a hint-taking tiny model)

def hints_case(name, content, rc=0, says=(), n_photo=(40, 30), accepted=None):
    @case(f"hints {name}", accepted)
    def _(d):
        png(d / "a.png", *n_photo)
        f = d / "h.json"
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content if isinstance(content, str) else json.dumps(content))
        problems = infer(d, d / "a.png", extra=("--hints", f), rc=rc, says=says or ((("h.json",)) if rc else ()), kind="hints")
        return problems + (made(d, "a.png", n_photo) if rc == 0 else [])


hints_case("empty list", {"hints": []})
hints_case("bare empty list", "[]")
hints_case("bare list of hints", [{"x": 1, "y": 2, "color": "#ff0000"}])
hints_case("duplicate points", {"hints": [{"x": 5, "y": 5, "color": "#ff0000"}] * 50})
hints_case("float coordinates", {"hints": [{"x": 1.5, "y": 29.999, "color": "#00ff00"}]})
hints_case("negative x", {"hints": [{"x": -1, "y": 2, "color": "#ff0000"}]}, rc=1, says=("h.json", "-1"))
hints_case("x at the width", {"hints": [{"x": 40, "y": 2, "color": "#ff0000"}]}, rc=1, says=("h.json", "40"))
hints_case("NaN x (non-standard JSON)", '{"hints": [{"x": NaN, "y": 2, "color": "#ff0000"}]}', rc=1, says=("h.json", "nan"))
hints_case("Infinity y", '{"hints": [{"x": 1, "y": Infinity, "color": "#ff0000"}]}', rc=1, says=("h.json", "inf"))
hints_case("1e400 x", '{"hints": [{"x": 1e400, "y": 1, "color": "#ff0000"}]}', rc=1, says=("h.json",))
hints_case("x 10**30", '{"hints": [{"x": 1000000000000000000000000000000, "y": 1, "color": "#ff0000"}]}', rc=1, says=("h.json",))
hints_case("x a string", {"hints": [{"x": "12", "y": 1, "color": "#ff0000"}]}, rc=1, says=("h.json", "'12'"))
hints_case("x true", {"hints": [{"x": True, "y": 1, "color": "#ff0000"}]}, rc=1, says=("h.json", "True"))
hints_case("x null", {"hints": [{"x": None, "y": 1, "color": "#ff0000"}]}, rc=1, says=("h.json", "None"))
hints_case("20,000 hints", {"hints": [{"x": i % 40, "y": i % 30, "color": "#102030"} for i in range(20_000)]})
hints_case("100,000 hints (over the size limit)", {"hints": [{"x": i % 40, "y": i % 30, "color": "#102030"} for i in range(100_000)]},
           rc=1, says=("h.json", "MB"))
hints_case("100,000 hints, compact, under 1 MB", "[" + ",".join(['{"x":1,"y":2,"color":[1,2,3]}'] * 100_000)[:999_000].rsplit(",", 1)[0]
           + "]")
hints_case("colour #fff", {"hints": [{"x": 1, "y": 1, "color": "#fff"}]}, rc=1, says=("h.json", "#fff"))
hints_case("colour named red", {"hints": [{"x": 1, "y": 1, "color": "red"}]}, rc=1, says=("h.json", "red"))
hints_case("colour [r, g, b]", {"hints": [{"x": 1, "y": 1, "color": [255, 0, 0]}]})
hints_case("colour [r, g, b, a]", {"hints": [{"x": 1, "y": 1, "color": [255, 0, 0, 255]}]}, rc=1, says=("h.json",))
hints_case("colour rgb(300,0,0)", {"hints": [{"x": 1, "y": 1, "color": "rgb(300,0,0)"}]}, rc=1, says=("h.json", "300"))
hints_case("colour as an integer", {"hints": [{"x": 1, "y": 1, "color": 16711680}]}, rc=1, says=("h.json", "16711680"))
hints_case("colour null", {"hints": [{"x": 1, "y": 1, "color": None}]}, rc=1, says=("h.json", "None"))
hints_case("colour [-1, 0, 0]", {"hints": [{"x": 1, "y": 1, "color": [-1, 0, 0]}]}, rc=1, says=("h.json",))
hints_case("colour [NaN, 0, 0]", '{"hints": [{"x": 1, "y": 1, "color": [NaN, 0, 0]}]}', rc=1, says=("h.json",))
hints_case("colour with spaces and uppercase", {"hints": [{"x": 1, "y": 1, "color": "  #FF00aa "}]})
hints_case("hints a dict", {"hints": {"x": 1}}, rc=1, says=("h.json",))
hints_case("no hints key", {"points": []}, rc=1, says=("h.json",))
hints_case("top level a string", '"#ff0000"', rc=1, says=("h.json",))
hints_case("top level null", "null", rc=1, says=("h.json",))
hints_case("extra keys", {"hints": [{"x": 1, "y": 1, "color": "#ff0000", "frame": 3, "note": "hi"}], "v": 2})
hints_case("duplicate hints keys", '{"hints": [], "hints": [{"x": 1, "y": 1, "color": "#ff0000"}]}')
hints_case("latin-1 bytes", b'{"hints": [], "note": "caf\xe9"}', rc=1, says=("h.json",))
hints_case("0-byte file", "", rc=1, says=("h.json",))
hints_case("only whitespace", " \n\t ", rc=1, says=("h.json",))
hints_case("trailing comma", '{"hints": [],}', rc=1, says=("h.json",))
hints_case("a huge string value", {"hints": [], "x": "a" * 900_000})
hints_case("1x1 photo, hint at 0,0", {"hints": [{"x": 0, "y": 0, "color": "#ff0000"}]}, n_photo=(1, 1))


@case("hints with a model that takes none")
def _(d):
    png(d / "a.png")
    (d / "h.json").write_text('{"hints": [{"x": 1, "y": 1, "color": "#ff0000"}]}')
    return infer(d, d / "a.png", extra=("--hints", d / "h.json"), rc=1, says=("h.json", "hints"))


@case("hints sidecar bad beside one photo of two")
def _(d):
    (d / "album").mkdir()
    png(d / "album" / "a.png")
    png(d / "album" / "b.png")
    (d / "album" / "a.hints.json").write_text("{oops")
    return infer(d, d / "album", rc=1, says=("a.hints.json",), kind="hints") + made(d, "b.png", (24, 20))


@case("hints --hints for two photos")
def _(d):
    png(d / "a.png")
    png(d / "b.png")
    (d / "h.json").write_text("[]")
    return infer(d, d / "a.png", d / "b.png", extra=("--hints", d / "h.json"), rc=2, says=("h.json",), kind="hints")


@case("hints --hints missing file")
def _(d):
    png(d / "a.png")
    return infer(d, d / "a.png", extra=("--hints", d / "none.json"), rc=1, says=("none.json",), kind="hints")


@case("hints --eval --hints 10**20")
def _(d):
    (d / "photos").mkdir()
    png(d / "photos" / "a.png")
    return run(d, "--eval", d / "photos", "--hints", "1" + "0" * 20, "--weights", weights("hints"), "--out", d / "out",
               rc="nonzero", says=("100000000000000000000",))


@case("hints --eval --hints 0")
def _(d):
    (d / "photos").mkdir()
    png(d / "photos" / "a.png")
    return run(d, "--eval", d / "photos", "--hints", "0", "--weights", weights("hints"), "--out", d / "out")


@case("hints --eval --hints 5 on a 1x1 photo")
def _(d):
    (d / "photos").mkdir()
    png(d / "photos" / "a.png", 1, 1)
    png(d / "photos" / "b.png")
    return run(d, "--eval", d / "photos", "--hints", "5", "--weights", weights("hints"), "--out", d / "out")


# -----------------------------------------------------------------------------
# Constants on the command line: each refused in one line naming the flag, or accepted

def constant_case(flag, value, rc=2, says=None, mode="infer", accepted=None):
    @case(f"constant {flag} {value}", accepted)
    def _(d):
        png(d / "a.png")
        if mode == "infer":
            args = ["--infer", d / "a.png", "--weights", weights(), "--out", d / "out"]
        elif mode == "eval":
            (d / "photos").mkdir()
            png(d / "photos" / "p.png")
            args = ["--eval", d / "photos", "--weights", weights(), "--out", d / "out"]
        else:
            (d / "photos").mkdir()
            for i in range(3):
                png(d / "photos" / f"p{i}.png", 40, 40, i)
            args = ["--train", "--data", d / "photos", "--run-dir", d / "run", "--ngf", "8", "--ndf", "8", "--n-downs", "3",
                    "--size", "32", "--batch-size", "2", "--num-workers", "0", "--num-d", "1", "--attn-factors", "4",
                    "--num-samples", "1", "--device", "cpu"]
            if flag != "--steps":
                args += ["--steps", "1"]
        return run(d, *args, f"{flag}={value}", rc=rc, says=(flag,) if says is None else says)


for _flag, _value in [("--render-size", "0"), ("--render-size", "-1"), ("--render-size", "1e9"), ("--render-size", "nan"),
                      ("--render-size", "inf"), ("--render-size", "99999"), ("--render-size", ""), ("--saturation", "-1"),
                      ("--saturation", "nan"), ("--saturation", "inf"), ("--saturation", "1e400"), ("--saturation", "0x10"),
                      ("--max-pixels", "-1"), ("--temporal", "1"), ("--device", "tpu"),
                      ("--device", "cuda:99"), ("--backend", "tensorrt"), ("--threads", "-3"), ("--seed", "-1"),
                      ("--seed", str(2 ** 70)), ("--attn-factors", "3"), ("--attn-factors", "x"), ("--spectral-norm", "maybe"),
                      ("--amp", "fp8")]:
    constant_case(_flag, _value)
constant_case("--saturation", "1e-300", rc=0, says=())
constant_case("--saturation", "0", rc=0, says=())
constant_case("--render-size", "00032", rc=0, says=())
constant_case("--device", "cuda", rc=2, says=("cuda",))
constant_case("--max-pixels", "1", rc=1, says=("a.png", "limit"))
constant_case("--max-pixels", "1_0", rc=1, says=("a.png", "limit of 10"))  # int() reads 1_0 as 10
constant_case("--backend", "onnx", rc=2, says=("onnx",))
constant_case("--eval-size", "-5", mode="eval")
constant_case("--eval-size", "99999", mode="eval")
constant_case("--eval-size", "1", mode="eval", rc=0, says=())
constant_case("--num-samples", "0", mode="eval")
constant_case("--batch-size", "0", mode="train")
constant_case("--lr-g", "nan", mode="train")
constant_case("--lr-d", "-0.0", mode="train")
constant_case("--steps", "-1", mode="train", accepted="names --max-steps, the constant that --steps is a short form of "
              "(as --help shows)")
constant_case("--ema-decay", "1", mode="train")
constant_case("--gan-mode", "wgan", mode="train")
constant_case("--steps", "1", mode="train", rc=0, says=())


@case("constant an unknown flag")
def _(d):
    return run(d, "--infer", "x.png", "--colour", "red", rc=2, says=("--colour",))


@case("constant no mode at all")
def _(d):
    return run(d, "--render-size", "64", rc=2, says=("--infer",))


# -----------------------------------------------------------------------------
# Weights files, --export and soup.py

def bad_weights(d, kind):
    """A weights file of a hostile kind in d; returns its path."""
    import torch
    p = d / f"{kind}.pt"
    good = Path(weights()).read_bytes()
    if kind == "truncated":
        p.write_bytes(good[: len(good) // 2])
    elif kind == "one_byte_short":
        p.write_bytes(good[:-1])
    elif kind == "zip_not_checkpoint":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("archive/data.pkl", "hello")
    elif kind == "empty_zip":
        with zipfile.ZipFile(p, "w"):
            pass
    elif kind in ("malicious_pickle", "malicious_zip"):
        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {d / 'PWNED'}",))
        if kind == "malicious_pickle":
            p.write_bytes(pickle.dumps({"cfg": {}, "netG_ema": Evil()}))
        else:
            torch.save({"cfg": {}, "netG_ema": {}, "x": Evil()}, p, _use_new_zipfile_serialization=True)
    elif kind == "tensor_not_dict":
        torch.save(torch.zeros(3), p)
    else:
        ckpt = torch.load(weights(), weights_only=True)
        edits = {"ngf_str": ("NGF", "8"), "attn_none": ("ATTN_FACTORS", None), "ngf_huge": ("NGF", 1_000_000),
                 "n_downs_99": ("N_DOWNS", 99), "n_downs_0": ("N_DOWNS", 0), "encoder_bad": ("ENCODER", "resnet"),
                 "hint_str": ("HINT_INPUT", "yes"), "ngf_float": ("NGF", 8.5), "attn_str": ("ATTN_FACTORS", "4"),
                 "ngf_negative": ("NGF", -8), "spectral_str": ("SPECTRAL_NORM", "no"), "dropout_2": ("DROPOUT", 2.0)}
        if kind in edits:
            k, v = edits[kind]
            ckpt["cfg"][k] = v
        elif kind == "cfg_list":
            ckpt["cfg"] = [1, 2]
        elif kind == "missing_tensor":
            ckpt["netG_ema"].pop(sorted(ckpt["netG_ema"])[0])
        elif kind == "extra_tensor":
            ckpt["netG_ema"]["extra.weight"] = torch.zeros(1)
        elif kind == "wrong_shape":
            k = sorted(ckpt["netG_ema"])[0]
            ckpt["netG_ema"][k] = torch.zeros(2, 2)  # (the first may be an attention gamma, of shape (1,))
        elif kind == "int_tensor":
            k = next(k for k, v in ckpt["netG_ema"].items() if v.is_floating_point())
            ckpt["netG_ema"][k] = ckpt["netG_ema"][k].to(torch.int32)
        elif kind == "about_int":
            ckpt["about"] = 12
        elif kind == "format_99":
            ckpt["format_version"] = 99
        elif kind == "state_keys_int":
            ckpt["netG_ema"] = {1: torch.zeros(1)}
        torch.save(ckpt, p)
    return p


WEIGHT_KINDS = ["truncated", "one_byte_short", "zip_not_checkpoint", "empty_zip", "malicious_pickle", "malicious_zip",
                "tensor_not_dict", "ngf_str", "attn_none", "ngf_huge", "n_downs_99", "n_downs_0", "encoder_bad", "hint_str",
                "ngf_float", "attn_str", "ngf_negative", "spectral_str", "dropout_2", "cfg_list", "missing_tensor",
                "extra_tensor", "wrong_shape", "int_tensor", "format_99", "state_keys_int"]

for _kind in WEIGHT_KINDS:
    @case(f"weights {_kind}")
    def _(d, kind=_kind):
        p = bad_weights(d, kind)
        png(d / "a.png")
        problems = run(d, "--infer", d / "a.png", "--weights", p, "--out", d / "out", rc=2, says=(p.name,))
        return problems + (["the pickle ran code"] if (d / "PWNED").exists() else [])


@case("weights about_int, exported")
def _(d):
    p = bad_weights(d, "about_int")
    return run(d, "--export", d / "small.pt", "--weights", p)


@case("weights an .onnx that is a .pt")
def _(d):
    p = d / "model.onnx"
    p.write_bytes(Path(weights()).read_bytes())
    png(d / "a.png")
    return run(d, "--infer", d / "a.png", "--weights", p, "--out", d / "out", rc=2, says=("model.onnx",))


@case("weights a .pt that is an image")
def _(d):
    png(d / "model.pt", format="PNG")
    return run(d, "--infer", d / "model.pt", "--weights", d / "model.pt", "--out", d / "out", rc=2, says=("model.pt",))


@case("export into a folder")
def _(d):
    (d / "models").mkdir()
    return run(d, "--export", d / "models", "--weights", weights(), rc=2, says=("models",))


@case("export a name with no suffix")
def _(d):
    problems = run(d, "--export", d / "model", "--weights", weights())
    return problems + ([] if (d / "model").is_file() else ["no file written"])


@case("export .onnx into a missing folder")
def _(d):
    problems = run(d, "--export", d / "new" / "deeper" / "m.onnx", "--weights", weights(), timeout=300)
    return problems + ([] if (d / "new" / "deeper" / "m.onnx").is_file() else ["no file written"])


@case("export .pt under a file")
def _(d):
    (d / "file").write_text("x")
    return run(d, "--export", d / "file" / "m.pt", "--weights", weights(), rc=2, says=("file",))


@case("export an empty name")
def _(d):
    return run(d, "--export", "", "--weights", weights(), rc=2, says=("--export",))


@case("export a truncated checkpoint")
def _(d):
    p = bad_weights(d, "truncated")
    return run(d, "--export", d / "m.pt", "--weights", p, rc=2, says=("truncated.pt",))


@case("export uppercase .ONNX")
def _(d):
    problems = run(d, "--export", d / "M.ONNX", "--weights", weights(), timeout=300)
    return problems + ([] if (d / "M.ONNX").is_file() else ["no file written"])


@case("soup of one model with itself twice")
def _(d):
    return run(d, d / "soup.pt", weights(), weights(), program="soup.py")


@case("soup of a model and a symlink to it")
def _(d):
    os.symlink(weights(), d / "link.pt")
    return run(d, d / "soup.pt", weights(), d / "link.pt", program="soup.py")


@case("soup of one ingredient")
def _(d):
    return run(d, d / "soup.pt", weights(), program="soup.py", rc=2, says=("two",))


@case("soup with a truncated ingredient")
def _(d):
    return run(d, d / "soup.pt", weights(), bad_weights(d, "truncated"), program="soup.py", rc=2, says=("truncated.pt",))


@case("soup of a hint model and a plain one")
def _(d):
    return run(d, d / "soup.pt", weights(), weights("hints"), program="soup.py", rc=2, says=("HINT_INPUT",))


@case("soup with an ingredient whose cfg NGF is a string")
def _(d):
    return run(d, d / "soup.pt", bad_weights(d, "ngf_str"), weights(), program="soup.py", rc=2, says=("ngf_str.pt",))


@case("soup with an ingredient whose tensor is int")
def _(d):
    return run(d, d / "soup.pt", weights(), bad_weights(d, "int_tensor"), program="soup.py", rc=2, says=("int_tensor.pt",))


@case("soup into a missing folder")
def _(d):
    problems = run(d, d / "new" / "soup.pt", weights(), weights(), program="soup.py")
    return problems + ([] if (d / "new" / "soup.pt").is_file() else ["no file written"])


@case("soup with a missing ingredient")
def _(d):
    return run(d, d / "soup.pt", weights(), d / "nope.pt", program="soup.py", rc=2, says=("nope.pt",))


@case("soup with no arguments")
def _(d):
    return run(d, program="soup.py", rc=2, says=("the following arguments are required",))


@case("soup with an unknown option")
def _(d):
    return run(d, d / "soup.pt", weights(), weights(), "--mean", "geometric", program="soup.py", rc=2, says=("--mean",))


@case("soup --about empty")
def _(d):
    return run(d, d / "soup.pt", weights(), weights(), "--about", "", program="soup.py")


# -----------------------------------------------------------------------------
# The Python API, in this process

def colorizer(kind="plain"):
    from colorizer import Colorizer
    return Colorizer.load(weights(kind), device="cpu")


def sized(w, h):
    return lambda im: None if im.size == (w, h) else f"result is {im.size}, expected {(w, h)}"


def api_case(name, make, refused=None, says=(), check=None, kind="plain", **kw):
    @case(f"api {name}")
    def _(d):
        c = colorizer(kind)
        return api(lambda: c.colorize(make(d), **kw), refused, says, check)


def _closed():
    im = Image.fromarray(photo(20, 16))
    im.close()
    return im


api_case("closed PIL image", lambda d: _closed(), ValueError, ("closed",))
api_case("non-contiguous array", lambda d: photo(40, 30)[:, ::2], check=sized(20, 30))
api_case("transposed array", lambda d: photo(30, 20).transpose(1, 0, 2), check=sized(20, 30))
api_case("float64 array", lambda d: photo(20, 16) / 255.0, check=sized(20, 16))
api_case("float16 array", lambda d: (photo(20, 16) / 255.0).astype(np.float16), check=sized(20, 16))
api_case("uint16 array", lambda d: photo(20, 16).astype(np.uint16), ValueError, ("uint16",))
api_case("bool array", lambda d: np.ones((16, 20), bool), ValueError, ("bool",))
api_case("bytes", lambda d: encoded("PNG"), (ValueError, TypeError), ("bytes",))
api_case("pathlib.Path", lambda d: png(d / "a.png"), check=sized(24, 20))
api_case("file object", lambda d: open(png(d / "a.png"), "rb"), (ValueError, TypeError), ("BufferedReader",))
api_case("None", lambda d: None, (ValueError, TypeError), ("None",))
api_case("list of lists of floats", lambda d: [[0.5] * 8] * 6, check=sized(8, 6))
api_case("a folder path", lambda d: str(d), ValueError, ("is a folder",))
api_case("(1, H, W, 3) array", lambda d: photo(20, 16)[None], ValueError, ("(1, 16, 20, 3)",))
api_case("(H, W, 5) array", lambda d: np.zeros((16, 20, 5), np.uint8), ValueError, ("(16, 20, 5)",))
api_case("(0, 0) array", lambda d: np.zeros((0, 0), np.uint8), ValueError, ("(0, 0)",))
api_case("PIL 0x0 image", lambda d: Image.new("L", (0, 0)), ValueError, ("0x0",))
api_case("PIL mode LAB", lambda d: Image.fromarray(photo(20, 16)).convert("LAB"), check=sized(20, 16))
api_case("PIL mode HSV", lambda d: Image.fromarray(photo(20, 16)).convert("HSV"), check=sized(20, 16))
api_case("PIL mode I;16", lambda d: _gray16(), check=sized(30, 20))
api_case("PIL mode F out of range", lambda d: Image.fromarray(np.full((8, 8), 3.0, np.float32)), ValueError, ("[0, 1]",))
api_case("render_size 10**9", lambda d: photo(20, 16), check=sized(20, 16), render_size=10 ** 9)
api_case("render_size 256.0", lambda d: photo(20, 16), refused=ValueError, says=("256.0",), render_size=256.0)
api_case("render_size np.uint8", lambda d: photo(20, 16), check=sized(20, 16), render_size=np.uint8(16))
api_case("saturation 1e308", lambda d: photo(20, 16), refused=ValueError, says=("1e+308",), saturation=1e308)
api_case("saturation 1e30", lambda d: photo(20, 16), refused=ValueError, says=("1e+30",), saturation=1e30)
api_case("saturation np.nan", lambda d: photo(20, 16), refused=ValueError, says=("nan",), saturation=np.nan)
api_case("saturation a string", lambda d: photo(20, 16), refused=ValueError, says=("'2'",), saturation="2")
api_case("hints as a generator", lambda d: photo(20, 16), check=sized(20, 16), kind="hints",
         hints=((x, 1, "#ff0000") for x in range(3)))
api_case("hints a dict", lambda d: photo(20, 16), refused=ValueError, says=("hint 1",), kind="hints", hints={"x": 1})
api_case("hints a numpy (n, 3) array", lambda d: photo(20, 16), refused=ValueError, says=("hint 1",), kind="hints",
         hints=np.array([[1, 2, 3]]))
api_case("100,000 hints", lambda d: photo(20, 16), check=sized(20, 16), kind="hints",
         hints=[(i % 20, i % 16, (i % 256, 0, 0)) for i in range(100_000)])
api_case("hints a string", lambda d: photo(20, 16), refused=ValueError, says=("'#ff0000'",), kind="hints", hints="#ff0000")
api_case("hint colour numpy uint8 triple", lambda d: photo(20, 16), check=sized(20, 16), kind="hints",
         hints=[(1, 1, np.array([255, 0, 0], np.uint8))])


@case("api load a missing file")
def _(d):
    from colorizer import Colorizer
    from files import UserError
    return api(lambda: Colorizer.load(d / "none.pt"), UserError, ("none.pt",))


@case("api load render_size 0")
def _(d):
    from colorizer import Colorizer
    return api(lambda: Colorizer.load(weights(), render_size=0).colorize(photo(8, 8)), ValueError, ("render_size",))


@case("api load weights as an int")
def _(d):
    from colorizer import Colorizer
    return api(lambda: Colorizer.load(12), (TypeError, ValueError), ("int",))


@case("api load weights as bytes path")
def _(d):
    from colorizer import Colorizer
    return api(lambda: Colorizer.load(os.fsencode(weights()), device="cpu").colorize(photo(8, 8)), check=sized(8, 8))


# -----------------------------------------------------------------------------
# Film

def clip(path, frames=3, w=32, h=24, audio=False, video=True, rate=10):
    import av
    with av.open(str(path), "w") as out:
        if video:
            odd = w % 2 or h % 2  # yuv420p needs even sizes: an odd one is stored as PNG frames
            s = out.add_stream("png" if odd else "libx264" if str(path).endswith((".mp4", ".mov", ".mkv")) else "mpeg4", rate=rate)
            s.width, s.height, s.pix_fmt = w, h, "rgb24" if odd else "yuv420p"
        if audio:
            a = out.add_stream("aac", rate=8000)
            a.layout = "mono"
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in a.encode(frame):
                out.mux(packet)
            for packet in a.encode(None):
                out.mux(packet)
        if video:
            for i in range(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(photo(w + w % 2, h + h % 2, i)[:h, :w]), format="rgb24")
                for packet in s.encode(frame):
                    out.mux(packet)
            for packet in s.encode():
                out.mux(packet)
    return path


def video_case(name, write, rc=0, says=(), frames=None):
    @case(f"video {name}")
    def _(d):
        fname = write(d)
        png(d / "good.png")
        problems = infer(d, d / fname, d / "good.png", rc=rc, says=says or ((fname,) if rc else ()), timeout=240)
        problems += made(d, "good.png", (24, 20))
        if rc == 0 and frames is not None:
            import av
            out = d / "out" / (os.path.splitext(fname)[0] + ".mp4")
            if not out.exists():
                return problems + ["no film written"]
            with av.open(str(out)) as f:
                n = sum(1 for _ in f.decode(video=0))
            problems += [] if n == frames else [f"{n} frames, expected {frames}"]
        return problems


video_case("a PNG named .mp4 (FFmpeg reads it as a one-frame film)", _bytes("still.mp4", lambda: encoded("PNG")), frames=1)
video_case("a 0-byte .mp4", _bytes("empty.mp4", b""), rc=1)
video_case("audio only .mp4", lambda d: clip(d / "sound.mp4", audio=True, video=False).name, rc=1)
video_case("one frame", lambda d: clip(d / "one.mp4", frames=1).name, frames=1)
video_case(".mov with odd size 33x17", lambda d: clip(d / "odd.mov", w=33, h=17).name, frames=3)
video_case("2x2 pixels .mkv", lambda d: clip(d / "tiny.mkv", w=2, h=2).name, frames=3)
video_case("uppercase .MP4", lambda d: clip(d / "UP.MP4").name, frames=3)
video_case("cut in half", _bytes("half.mp4", lambda: (lambda b: b[: len(b) // 2])(clip(ROOT_CLIP / "h.mp4", 8).read_bytes())), rc=1)
video_case("text named .webm", _bytes("notes.webm", b"just words\n"), rc=1)
video_case("with audio .mp4", lambda d: clip(d / "talk.mp4", audio=True).name, frames=3)


@case("video bad clip hints beside it")
def _(d):
    clip(d / "c.mp4")
    (d / "c.hints.json").write_text('{"hints": [{"frame": -1, "x": 1, "y": 1, "color": "#ff0000"}]}')
    png(d / "good.png")
    return infer(d, d / "c.mp4", d / "good.png", rc=1, says=("c.hints.json",), kind="hints", timeout=240)


# -----------------------------------------------------------------------------
# The environment

def env_case(name, env=None, cwd=None, stdout_says=("colorized 1 of 1",), accepted=None):
    @case(f"env {name}", accepted)
    def _(d):
        png(d / "a.png")
        return infer(d, d / "a.png", env=env, cwd=cwd(d) if cwd else None, stdout_says=stdout_says)


env_case("HOME unset", {"HOME": None})
env_case("TMPDIR missing", {"TMPDIR": "/nonexistent/tmp"})
env_case("LANG=C, LC_ALL=C", {"LANG": "C", "LC_ALL": "C"})
env_case("COLUMNS=-5", {"COLUMNS": "-5"})
env_case("OMP_NUM_THREADS=abc", {"OMP_NUM_THREADS": "abc"}, accepted="libgomp's own one line about the user's "
         "variable, printed when torch loads; the photo is colorized")
env_case("cwd is / (read-only for a user)", cwd=lambda d: "/")


@case("env PYTHONIOENCODING=ascii, a failure with a non-ASCII name")
def _(d):
    png(d / "good.png")
    (d / "ñandú.png").write_text("not an image")
    return infer(d, d / "ñandú.png", d / "good.png", rc=1, says=("and",), env={"PYTHONIOENCODING": "ascii"})


# -----------------------------------------------------------------------------

def main(argv=None):
    global ROOT, ROOT_CLIP
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", help="run the cases whose name holds this (repeatable)")
    p.add_argument("--list", action="store_true", help="print the case names and stop")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args(argv)
    chosen = [c for c in CASES if not args.only or any(s in c[0] for s in args.only)]
    if args.list:
        print("\n".join(name for name, _, _ in chosen))
        return 0
    ROOT = tempfile.mkdtemp(prefix="hostile-")
    ROOT_CLIP = Path(ROOT) / "clips"
    ROOT_CLIP.mkdir()
    tally = {"clean": 0, "unclean": 0, "accepted": 0}
    by_class = {}
    for i, (name, fn, accepted) in enumerate(chosen):
        d = Path(ROOT) / f"case{i:03d}"
        d.mkdir()
        t0 = time.time()
        try:
            problems = fn(d)
        except Exception as e:  # the harness itself: say so, go on
            problems = [f"harness error {type(e).__name__}: {e}"]
        gc.collect()
        verdict = "clean" if not problems else "accepted" if accepted else "unclean"
        tally[verdict] += 1
        cls = name.split()[0]
        by_class.setdefault(cls, {"clean": 0, "unclean": 0, "accepted": 0})[verdict] += 1
        line = f"{verdict.upper():8} {name} ({time.time() - t0:.1f} s)"
        if problems:
            line += "\n         " + "\n         ".join(problems[:3])
        print(line, flush=True)
    print(f"\ntried {len(chosen)}, clean {tally['clean']}, unclean {tally['unclean']}, "
          f"unclean by design {tally['accepted']}")
    for cls, t in by_class.items():
        print(f"  {cls:10} tried {sum(t.values()):3}  clean {t['clean']:3}  unclean {t['unclean']:3}  by design {t['accepted']}")
    if not args.keep:
        subprocess.run(["rm", "-rf", ROOT])
    return 1 if tally["unclean"] else 0


ROOT = ROOT_CLIP = None

if __name__ == "__main__":
    sys.exit(main())
