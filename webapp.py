"""--serve: a local web page on the Python API, for people who do not use a terminal.

Drop one or many photos; each is colorized with the current settings and shown before / after at
its own size; click the photo to give a colour hint there (models trained with HINT_INPUT); download
the PNG, or a zip of all. Built with Gradio (requirements-ui.txt); the model is loaded once.
"""
import errno
import json
import math
import numbers
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
import traceback
import zipfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home: the page works offline

from PIL import ImageDraw  # noqa: E402

from colorizer import failure_reason  # noqa: E402
from files import UserError, describe_os_error, display_name, sigterm_as_interrupt  # noqa: E402
from hints import SIDECAR_SUFFIX, HintError, hex_color, hints_json, parse_color, read_hints  # noqa: E402
from images import BadImageError  # noqa: E402

PRESETS = {  # name: colour of a hint; only hue and saturation count, the photo keeps its lightness
    "light skin": "#e8b898", "medium skin": "#c68a64", "dark skin": "#8a5a3c",
    "sky blue": "#6a9fd8", "grass green": "#5f8f3a", "brick red": "#a3432f",
}
RENDER_SIZES = (256, 1024)  # the longer side the network sees, pixels (larger: slower and paler)
PREVIEW_PX = 1024  # a photo larger than this is shown first colorized at this size, then at its own
PRIVATE_PREFIX = "colorizer-web-"  # the server's one private folder: colorizer-web-<pid>-<random>, in the temp folder
LEGACY_STALE_S = 3600  # a colorizer-web-<random> folder of an older version (no pid): stale once unchanged this long


# -----------------------------------------------------------------------------
# Privacy: every photo the page sees (uploads, Gradio's copies, results) lives in one private folder
# per server, removed when the server stops and by "Forget these photos"

def make_private_folder(log=print):
    """A new private folder (mode 0700) for one server, named with its pid, after removing those of dead
    servers; Gradio's uploads and cached copies are pointed into it (GRADIO_TEMP_DIR, read by Gradio
    when it makes each component and the server, so this runs before any of them is made)."""
    remove_stale_folders(log=log)
    root = tempfile.mkdtemp(prefix=f"{PRIVATE_PREFIX}{os.getpid()}-")  # mkdtemp: mode 0700, owner only
    os.environ["GRADIO_TEMP_DIR"] = os.path.join(root, "gradio")
    return root


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_folders(temp_root=None, log=print):
    """Remove the private folders left by servers that could not clean up (SIGKILL, power loss): this
    user's colorizer-web-<pid>-* folders whose pid is gone, and an older version's pid-less ones
    unchanged for LEGACY_STALE_S. Another user's folder, a link, or a live server's folder is left alone."""
    temp_root = temp_root or tempfile.gettempdir()
    try:
        names = os.listdir(temp_root)
    except OSError:
        return
    for name in sorted(names):
        if not name.startswith(PRIVATE_PREFIX):
            continue
        path = os.path.join(temp_root, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        owner = re.fullmatch(re.escape(PRIVATE_PREFIX) + r"(\d+)-.+", name)
        if owner and pid_alive(int(owner.group(1))):
            continue
        if not owner and time.time() - st.st_mtime < LEGACY_STALE_S:
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            log(f"removed {display_name(path)}, the photos of a web page server that was killed")


def remove_file(path, up_to=None):
    """Remove the file path (if there), then its parent folders while they are empty, up to (not
    including) the folder up_to: Gradio keeps each cached copy in a folder of its own."""
    try:
        os.remove(path)
    except OSError:
        return
    folder = os.path.dirname(path)
    while up_to and os.path.realpath(folder) != os.path.realpath(up_to) and inside(folder, up_to):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = os.path.dirname(folder)


def inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def cache_folder():
    """Where Gradio keeps uploads and its copies of the files the page shows (None: Gradio's default,
    outside our folder, when build_app was called without one, as the in-process tests do)."""
    return os.environ.get("GRADIO_TEMP_DIR")


def gray_of(colorizer, path):
    """The photo as the network sees it: its own lightness, no colour, as an 8-bit RGB image (the
    gray baseline of --eval, pixel for pixel): the colorizer's own pipeline with no colour added,
    read as --infer reads, in bands on its threads (a 13 MP scan in under half the time of images.gray_version)."""
    return colorizer.colorize(path, saturation=0)


def with_markers(img, hints):
    """A copy of img with each hint drawn as a ring of its colour, so the user sees where they are."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    r = max(4, round(max(img.size) / 120))
    for x, y, colour in hints:
        draw.ellipse((x - r - 1, y - r - 1, x + r + 1, y + r + 1), outline="white", width=2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline="black", width=1)
    return img


class Session:
    """The photos of one browser tab: name, path, gray image, hints and the latest colour result.
    Its PNGs, zip and hints files are written under root, a folder removed when the server stops."""

    def __init__(self, root):
        self.photos, self.current, self.folder, self.added = [], 0, tempfile.mkdtemp(dir=root), 0
        self.reference = None  # a colour photo whose colours guide every photo, or None
        self.zipped = None  # the PNGs (path, mtime) that colorized.zip holds
        self.cached = set()  # Gradio's copies of this session's files: uploads, and each file the page showed

    def note_shown(self, paths):
        """Remember where Gradio will copy each file the page is about to show: <cache>/<hash of the
        content>/<name>, Gradio's own scheme (processing_utils.save_file_to_cache)."""
        cache = cache_folder()
        if not cache:
            return
        from gradio import processing_utils
        from gradio_client.utils import strip_invalid_filename_characters
        for path in filter(None, paths):
            try:
                self.cached.add(os.path.join(cache, processing_utils.hash_file(path),
                                             strip_invalid_filename_characters(os.path.basename(path))))
            except OSError:
                pass

    def forget(self):
        """Remove every file of this session from disk: its folder, its uploads and Gradio's copies."""
        cache = cache_folder()
        for path in self.cached | {p["path"] for p in self.photos}:
            if cache and inside(path, cache):  # only Gradio's copies: a path given in-process is the user's own
                remove_file(path, up_to=cache)
        if cache and os.path.isdir(cache):
            # Gradio's File makes an empty tmpXXXXXXXX file per upload and never uses it (6.x,
            # components/file.py): no one's data, so every one of them goes
            for name in os.listdir(cache):
                path = os.path.join(cache, name)
                if name.startswith("tmp") and os.path.isfile(path) and not os.path.islink(path) \
                        and os.path.getsize(path) == 0:
                    remove_file(path)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.photos, self.cached, self.zipped, self.current = [], set(), None, 0

    def photo(self):
        return self.photos[self.current] if self.photos else None

    def add(self, name, path):
        """A new photo at the end of the list, numbered for good (its files keep their names when
        another photo is removed); returns its index."""
        self.added += 1
        self.photos.append({"name": name, "path": path, "hints": [], "id": self.added})
        return len(self.photos) - 1

    def remove(self, i):
        """Photo i out of the list, its files off the disk (Gradio's copies go with forget())."""
        for kind in ("", "gray", "marked"):
            remove_file(self.output_path(i, kind))
        remove_file(self.hints_path(i))
        del self.photos[i]
        self.current = min(self.current, max(len(self.photos) - 1, 0))
        self.zipped = None

    def output_path(self, i, kind=""):
        """Where photo i's PNG is written (kind "gray" and "marked": the page's other views of it)."""
        stem = os.path.splitext(self.photos[i]["name"])[0]
        return os.path.join(self.folder, f"{self.photos[i].get('id', i + 1):03d}{kind}_{stem}.png")

    def hints_path(self, i):
        """Where photo i's hints are written for "Save hints": photo.hints.json, the name --infer reads
        beside photo.jpg."""
        return os.path.join(self.folder, os.path.splitext(self.photos[i]["name"])[0] + SIDECAR_SUFFIX)

    def download(self):
        """One photo: its PNG; several: a zip of all."""
        if not self.photos:
            return None
        if len(self.photos) == 1:
            return self.output_path(0)
        path = os.path.join(self.folder, "colorized.zip")
        pngs = [(self.output_path(i), os.stat(self.output_path(i)).st_mtime_ns) for i in range(len(self.photos))]
        if pngs != self.zipped:  # rebuilt only when a photo was added or re-rendered, not on every view
            with zipfile.ZipFile(path, "w") as z:
                for png, _ in pngs:
                    z.write(png, os.path.basename(png))
            self.zipped = pngs
        return path


def build_app(colorizer, root=None):
    """The Gradio Blocks app around a loaded Colorizer; every file it writes is under the folder root
    (serve() makes it with make_private_folder() and removes it); without one, a temporary folder
    that lives as long as the app."""
    import gradio as gr
    if root is None:
        temp_root = tempfile.TemporaryDirectory(prefix=PRIVATE_PREFIX)
        root = temp_root.name
    else:
        temp_root = root

    def render(session, i, render_size, saturation, preview=None):
        """Colorize photo i at the page's settings into its PNG; preview (its gray image at most
        PREVIEW_PX on its longer side): a quick version of it, shown while the full one is made."""
        p = session.photos[i]
        render_size, saturation = page_settings(render_size, saturation)
        t = time.perf_counter()
        p["colour"] = colorizer.colorize(p["path"] if preview is None else preview, render_size=render_size,
                                         saturation=saturation, hints=p["hints"] or None, reference=session.reference)
        save_fast(p["colour"], session.output_path(i))
        p["seconds"], p["preview"] = time.perf_counter() - t, preview is not None
        p["settings"] = (render_size, saturation, session.reference)

    def view(session, message=""):
        """Everything the page shows for the current photo."""
        p = session.photo() if session else None
        if p is None:
            return (session, gr.update(value=[], selected_index=None), None, None, None,
                    gr.update(choices=[], value=[]), None, message)
        thumbs = [(session.output_path(i), f"{i + 1}. {q['name']}") for i, q in enumerate(session.photos)]
        hints = [f"{k + 1}: ({x}, {y}) {c}" for k, (x, y, c) in enumerate(p["hints"])]
        hints_file = session.hints_path(session.current)
        with open(hints_file, "w") as f:
            f.write(hints_json(p["hints"]))
        state = "preview; the full photo follows" if p["preview"] else f"colorized in {p['seconds']:.2f} s"
        timing = f"{p['name']}: {p['size'][0]}x{p['size'][1]}, {state}"
        colour = session.output_path(session.current)
        shown = colour
        if p["hints"]:
            shown = save_fast(with_markers(p["colour"], p["hints"]), session.output_path(session.current, "marked"))
        download = session.download()
        session.note_shown([shown, p["gray"], colour, download, hints_file] + [t for t, _ in thumbs])
        return (session, gr.update(value=thumbs, selected_index=session.current),
                shown, (p["gray"], shown), download,
                gr.update(choices=hints, value=[]), hints_file, "\n\n".join(filter(None, [message, timing])))

    def add_photos(session, files, render_size, saturation):
        """Each new photo: a preview at once (photos over PREVIEW_PX), then the full render."""
        session = session or Session(root)
        problems, known = [], {p["path"] for p in session.photos}
        for f in files or []:
            path = f if isinstance(f, str) else f.name
            if path in known:
                continue
            name = os.path.basename(path)
            session.cached.add(path)  # the upload, forgotten with the photos even when it is not a photo
            i = session.add(name, path)
            try:
                gray = gray_of(colorizer, path)
                session.current, session.photos[i]["size"] = i, gray.size
                if max(gray.size) > PREVIEW_PX:  # a new photo has no hints yet: the preview is the small gray
                    small = gray.copy()
                    small.thumbnail((PREVIEW_PX, PREVIEW_PX))
                    session.photos[i]["gray"] = save_fast(small, session.output_path(i, "gray"))
                    render(session, i, render_size, saturation, preview=small)
                    yield view(session, "\n\n".join(problems)) + (None,)
                session.photos[i]["gray"] = save_fast(gray, session.output_path(i, "gray"))
                render(session, i, render_size, saturation)
            except Exception as e:  # a bad file is a message, the page keeps working
                session.remove(i)
                problems.append(f"**{name}** could not be colorized: {failure_reason(path, e)}")
        yield view(session, "\n\n".join(problems)) + (None,)  # the upload box emptied: the strip is the list

    def choose(session, render_size, saturation, evt: gr.SelectData):
        i = evt.index if isinstance(evt.index, int) and not isinstance(evt.index, bool) else -1
        if not (session and 0 <= i < len(session.photos)):
            return view(session)
        session.current = i
        return fresh(session, render_size, saturation)

    def fresh(session, render_size, saturation, message=""):
        """The current photo, re-rendered first when the settings changed since it was made."""
        p = session.photo()
        try:
            if p["preview"] or p["settings"] != (*page_settings(render_size, saturation), session.reference):
                render(session, session.current, render_size, saturation)
        except UserError as e:
            return view(session, f"**Not applied:** {e}")
        return view(session, message)

    def settings_changed(session, render_size, saturation):  # only the photo in view: the others when chosen
        return fresh(session, render_size, saturation) if session and session.photos else view(session)

    def set_reference(session, path, render_size, saturation):
        """A reference photo dropped (or removed: path None): checked, then the photo in view re-rendered
        with it; the others when they are chosen."""
        session, message = session or Session(root), ""
        if path:
            session.cached.add(path)  # the upload: forgotten with the photos
            try:
                colorizer.check_reference(path)
            except (UserError, HintError) as e:
                path, message = None, f"**Reference not used:** {e}"
        session.reference = path or None
        return fresh(session, render_size, saturation, message) if session.photos else view(session, message)

    def remove_photo(session):
        if session and session.photos:
            name = session.photo()["name"]
            session.remove(session.current)
            return view(session, f"Removed {name}.")
        return view(session)

    def change_hints(session, render_size, saturation, edit):
        p = session.photo() if session else None
        if p is None:
            return view(session, "Add a photo first.")
        if not colorizer.takes_hints:
            return view(session, "This model takes no colour hints: start the page with a hint model "
                                 "(`--weights`, see the README).")
        old = list(p["hints"])
        try:
            p["hints"] = edit(p)
            render(session, session.current, render_size, saturation)
        except (HintError, UserError, BadImageError) as e:
            p["hints"] = old
            return view(session, f"**Hints not applied:** {e}")
        return view(session)

    def click(session, colour, render_size, saturation, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, (list, tuple)) and len(evt.index) == 2 else ()
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in index) \
                or not index:
            return view(session, "**Hint not applied:** click on the colorized photo to give a colour there.")
        x, y = (int(v) for v in index)
        return change_hints(session, render_size, saturation, lambda p: p["hints"] + [(x, y, hex_color(parse_color(colour)))])

    def undo(session, render_size, saturation):
        return change_hints(session, render_size, saturation, lambda p: p["hints"][:-1])

    def remove(session, ticked, render_size, saturation):
        drop = {int(t.split(":", 1)[0]) - 1 for t in ticked or [] if t.split(":", 1)[0].isdecimal()}
        return change_hints(session, render_size, saturation,
                            lambda p: [h for k, h in enumerate(p["hints"]) if k not in drop])

    def clear(session, render_size, saturation):
        return change_hints(session, render_size, saturation, lambda p: [])

    def load_hints(session, file, render_size, saturation):
        path = file if isinstance(file, str) else getattr(file, "name", None)
        if not path:
            return view(session, "**Hints not applied:** choose a hints file (.json) to load.")
        if session:
            session.cached.add(path)  # the uploaded JSON: forgotten with the photos
        return change_hints(session, render_size, saturation,
                            lambda p: [(x, y, hex_color(parse_color(c))) for x, y, c in read_hints(path)])

    def forget(session):
        """ "Forget these photos": the session's files off the disk, its photos out of memory, the page cleared."""
        n = len(session.photos) if session else 0
        if session:
            session.forget()
        message = f"Forgotten: {n} photo{'s' * (n != 1)} and {'their' if n != 1 else 'its'} results removed from this computer." if n else ""
        return view(None, message) + (None,)

    def tab_closed(session):  # Gradio drops a tab's state an hour after the tab is closed or reloaded
        if session:
            session.forget()

    def hint_mode(on):
        """Hint mode shows the colorized photo to click on and the hint tools; off, the before / after slider."""
        return gr.update(visible=on), gr.update(visible=not on), gr.update(visible=on)

    with gr.Blocks(title="colorizer") as app:
        app.temp_root = temp_root
        session = gr.State(None, delete_callback=tab_closed)
        gr.Markdown("## Colorize black-and-white photos\nDrop photos on the left. Drag the slider over a photo to "
                    "compare; tick **Add colour hints** to click a colour onto something (it spreads over the "
                    "thing you click).")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                files = gr.File(label="Drop photos here", file_count="multiple", file_types=["image"], elem_id="upload",
                                height=120)
                gallery = gr.Gallery(label="Your photos (click one to work on it)", columns=4, height=200,
                                     allow_preview=False, object_fit="cover", elem_id="thumbs")
                remove_photo_btn = gr.Button("Remove this photo", size="sm", elem_id="remove-photo")
                reference = gr.Image(type="filepath", sources=["upload"], height=140, elem_id="reference",
                                     label="Reference colour photo (optional): its colours go where it matches")
                hint_toggle = gr.Checkbox(False, label="Add colour hints (click the photo)", elem_id="hint-mode")
                with gr.Group(visible=False) as hint_tools:
                    colour = gr.ColorPicker(value=PRESETS["brick red"], label="Hint colour", elem_id="colour")
                    preset = gr.Radio(list(PRESETS), label="Presets", elem_id="presets")
                    with gr.Row():
                        undo_btn = gr.Button("Undo last hint", size="sm", elem_id="undo-hint")
                        clear_btn = gr.Button("Clear hints", size="sm", elem_id="clear-hints")
                    hint_list = gr.CheckboxGroup([], label="Hints on this photo (tick to remove)", elem_id="hints")
                    remove_btn = gr.Button("Remove ticked", size="sm", elem_id="remove-hints")
                    with gr.Row():
                        save_hints = gr.DownloadButton("Save hints", size="sm", elem_id="save-hints")
                        load_btn = gr.UploadButton("Load hints", file_types=[".json"], size="sm", elem_id="load-hints")
                saturation = gr.Slider(0, 2, value=colorizer.saturation, step=0.05,
                                       label="Colour strength (1 = as the model predicts)", elem_id="saturation")
                render_size = gr.Slider(*RENDER_SIZES, value=max(RENDER_SIZES[0], min(colorizer.render_size,
                                        RENDER_SIZES[1])), step=64, elem_id="render-size",
                                        label="Network view, px (256 gives the most colour; larger is slower and "
                                              "paler, about half the colour at 512)")
            with gr.Column(scale=3):
                status = gr.Markdown(elem_id="status")
                compare = gr.ImageSlider(label="Before / after", type="filepath", elem_id="compare", height=620,
                                         buttons=["fullscreen"])
                result = gr.Image(label="Click to set a colour there", type="filepath", interactive=False,
                                  elem_id="result", height=620, visible=False, buttons=["fullscreen"])
                with gr.Row():
                    download = gr.File(label="Download (one photo: its PNG; several: a zip)", elem_id="download",
                                       height=80)
                    with gr.Column(min_width=200):
                        forget_btn = gr.Button("Forget these photos", variant="stop", elem_id="forget")
                        gr.Markdown("Removes this page's photos and results from this computer. They are also "
                                    "removed when the server stops.")
        outputs = [session, gallery, result, compare, download, hint_list, save_hints, status]
        settings = [render_size, saturation]
        files.upload(add_photos, [session, files] + settings, outputs + [files])
        gallery.select(choose, [session] + settings, outputs)
        remove_photo_btn.click(remove_photo, [session], outputs)
        reference.change(set_reference, [session, reference] + settings, outputs)
        for slider in settings:
            slider.release(settings_changed, [session] + settings, outputs)
        hint_toggle.change(hint_mode, hint_toggle, [result, compare, hint_tools])
        preset.input(lambda name: PRESETS[name], preset, colour)
        colour.input(lambda _: None, colour, preset)  # a colour of one's own: no preset is chosen any more
        result.select(click, [session, colour] + settings, outputs)
        undo_btn.click(undo, [session] + settings, outputs)
        remove_btn.click(remove, [session, hint_list] + settings, outputs)
        clear_btn.click(clear, [session] + settings, outputs)
        load_btn.upload(load_hints, [session, load_btn] + settings, outputs)
        forget_btn.click(forget, [session], outputs + [files])
    return app


def page_settings(render_size, saturation):
    """The page's render size and saturation as the colorizer takes them; UserError naming the one
    that is not a finite number in its slider's range (a request need not come from the sliders)."""
    def number(value, name, lo, hi):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= value <= hi:
            raise UserError(f"{name} must be a number in {lo}..{hi}, got {str(value)[:40]!r}")
        return value
    return round(number(render_size, "render size", *RENDER_SIZES)), float(number(saturation, "saturation", 0, 2))


class KnownEventsOnly:
    """ASGI middleware: a request for an event the page does not have (fn_index) is answered 404 in one
    line, where Gradio looks it up unguarded (KeyError: HTTP 500 and a traceback on the console); a
    request body over MAX_REQUEST bytes is answered 413 (the page's own requests are under a kilobyte:
    photos and hints files go through Gradio's upload route)."""
    MAX_REQUEST = 1 << 20
    ROUTES = ("/queue/join", "/run/predict", "/api/predict")

    def __init__(self, app, events):
        self.app, self.events = app, events

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].endswith(self.ROUTES):
            return await self.app(scope, receive, send)
        body, more = b"", True
        while more and len(body) <= self.MAX_REQUEST:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if len(body) > self.MAX_REQUEST:
            return await self.refuse(send, 413, f"request over {self.MAX_REQUEST} bytes")
        try:
            fn = json.loads(body).get("fn_index")
        except (ValueError, AttributeError, RecursionError):  # not a JSON object: Gradio's validation answers 422
            fn = None
        if fn is not None and (type(fn) is not int or fn not in self.events):
            return await self.refuse(send, 404, f"no event {str(fn)[:40]!r} on this page")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)

    @staticmethod
    async def refuse(send, status, why):
        print(f"page: refused a request: {why}", file=sys.stderr, flush=True)
        body = json.dumps({"detail": why}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class OneLineTracebacks:
    """Stands in for the traceback module inside Gradio's request handling, which prints a whole
    traceback for each request it refuses (a slider value out of range, a choice the page did not
    offer, a file that was not uploaded, a malformed event): the console gets one line per refused
    request instead, naming the error."""

    def __getattr__(self, name):
        return getattr(traceback, name)

    @staticmethod
    def print_exc(*args, **kwargs):
        e = sys.exc_info()[1]
        text = display_name(" ".join(str(e).split()))
        print(f"page: refused a request: {type(e).__name__}: {text[:200]}", file=sys.stderr, flush=True)


def quiet_gradio():
    """One line per refused request on the console (OneLineTracebacks), in Gradio's modules that print them."""
    from gradio import queueing, route_utils, routes, utils
    for module in (queueing, route_utils, routes, utils):
        if getattr(module, "traceback", None) is traceback:
            module.traceback = OneLineTracebacks()


def save_fast(img, path):
    """Write a PNG with light compression (a 1024 px photo in a tenth of the default's time) and
    return its path: the page shows these files as they are, never re-encoded."""
    img.save(path, format="PNG", compress_level=1)
    return path


def serve(colorizer, host="127.0.0.1", port=7860):
    """Start the page and block; Ctrl-C or SIGTERM stops it. The private folder holding every photo
    the page saw is removed however it stops (but SIGKILL: then at the next start)."""
    import importlib.util
    if importlib.util.find_spec("gradio") is None:
        raise UserError("--serve needs the web page's requirements: pip install -r requirements-ui.txt")
    check_port(host, port)
    root = make_private_folder()  # before Gradio is imported: it reads GRADIO_TEMP_DIR
    try:
        with sigterm_as_interrupt():
            try:
                import gradio as gr
                from starlette.middleware import Middleware
            except ImportError:
                raise UserError("--serve needs the web page's requirements: pip install -r requirements-ui.txt") from None
            if host not in ("127.0.0.1", "localhost"):
                print(f"warning: serving on {host}: anyone who can reach this machine can use the page and see the "
                      f"photos uploaded to it")
            app = build_app(colorizer, root)
            quiet_gradio()
            theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"])  # no web fonts: offline
            print(f"model {colorizer.weights} on {colorizer.device}; hints {'on' if colorizer.takes_hints else 'off'}")
            print(f"serving the page at http://{host}:{port} (Ctrl-C stops it)", flush=True)
            try:
                # quiet: Gradio's own banner advises share=True, which a user of this command line cannot set.
                # Our own wait, not Gradio's: its Ctrl-C handler keeps the heartbeats going while the server
                # closes, which then waits 5 s for them; close() stops them first
                app.launch(server_name=host, server_port=port, theme=theme, show_error=True, footer_links=[],
                           quiet=True, prevent_thread_lock=True,
                           app_kwargs={"middleware": [Middleware(KnownEventsOnly, events=frozenset(app.fns))]})
                while app.is_running:
                    time.sleep(0.2)
            finally:
                app.close()  # no request writes into the folder while it is removed
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if os.path.lexists(root):
            print(f"warning: could not remove {display_name(root)}, which holds the page's photos", flush=True)


def check_port(host, port):
    """UserError, naming --port, unless the page can listen on host:port (Gradio's own failure is a
    15-line traceback that never says which option to change)."""
    if not 0 < port < 65536:
        raise UserError(f"--port must be in 1..65535, got {port}")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        why = "already in use (another --serve?)" if e.errno == errno.EADDRINUSE else describe_os_error(e)
        raise UserError(f"--port {port}: cannot listen on {host}:{port}: {why}; choose another with --port N") from None
