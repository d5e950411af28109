"""Issue 20, --serve: requests the page never sends, made straight to its HTTP API (Gradio's queue).
Every one is refused or becomes a message on the page: the console gets one line per refused request
and no traceback, an event the page does not have is HTTP 404 (not 500), a colour, point or setting
out of range is a message in the page's status, and the page keeps working for the next request.
Needs requirements-ui.txt (Gradio); no browser."""
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from conftest import REPO, tiny_checkpoint
from test_webapp import free_port

httpx = pytest.importorskip("httpx", reason="pip install -r requirements-ui.txt")
pytest.importorskip("gradio", reason="pip install -r requirements-ui.txt")

PHOTO = os.path.join(REPO, "examples", "bsds_100007_gray.jpg")


class Page:
    """A client of the page's queue API: call(fn, data) -> (HTTP status, the event's result)."""

    def __init__(self, url):
        self.http = httpx.Client(base_url=url, timeout=120)
        self.events = {d["api_name"]: d["id"] for d in self.http.get("/config").json()["dependencies"]}

    def upload(self, path):
        with open(path, "rb") as f:
            name = self.http.post("/gradio_api/upload", files={"files": (os.path.basename(path), f)}).json()[0]
        return {"path": name, "meta": {"_type": "gradio.FileData"}, "orig_name": os.path.basename(path)}

    def post(self, body, session):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.http.post("/gradio_api/queue/join", content=content, headers={"content-type": "application/json"})

    def call(self, fn, data, event_data=None, session=None, raw=None):
        """(status, ("ok", the status text) or ("error", Gradio's message)); fn: an api name or an id."""
        session = session or uuid.uuid4().hex[:12]
        fn = self.events.get(fn, fn)
        r = self.post(raw if raw is not None else {"data": data, "fn_index": fn, "session_hash": session,
                                                   "event_data": event_data}, session)
        if r.status_code != 200:
            return r.status_code, r.text
        with self.http.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
            for line in stream.iter_lines():
                msg = json.loads(line[5:]) if line.startswith("data:") else {}
                if msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if not msg.get("success"):
                        return 200, ("error", str(out.get("error")))
                    data = out["data"]
                    status = data[7] if len(data) > 7 else data[-1]  # the page's status line is its 8th output
                    return 200, ("ok", status.get("value") if isinstance(status, dict) else status)
        return 200, ("no result", None)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    weights = tiny_checkpoint(folder / "hints.pt", HINT_INPUT=True)
    port = free_port()
    log_path = folder / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen([sys.executable, os.path.join(REPO, "colorize_base.py"), "--serve", "--port", str(port),
                                   "--weights", weights, "--device", "cpu", "--threads", "1"],
                                  stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while True:
        try:
            client = Page(f"http://127.0.0.1:{port}")
            break
        except httpx.HTTPError:
            assert server.poll() is None and time.time() < deadline, log_path.read_text()
            time.sleep(0.5)
    yield client, log_path
    server.terminate()
    server.wait(timeout=30)


def console_since(log_path, start):
    return log_path.read_text()[start:]


def test_requests_the_page_never_sends_are_refused_in_one_line_each(page):
    client, log_path = page
    start = len(log_path.read_text())
    photo = client.upload(PHOTO)
    refused = {  # each is refused by Gradio's checks or ours: an error for the caller, one console line
        "no such event": (999, [None]),
        "a negative event": (-1, [None]),
        "an event named by text": ("add_photos_", [None]),
        "a file that was not uploaded": ("add_photos", [None, [{**photo, "path": "/etc/passwd"}], 256, 1.0]),
        "render size below the slider": ("add_photos", [None, [photo], -5, 1.0]),
        "render size above it": ("settings_changed", [None, 10 ** 9, 1.0]),
        "saturation as text": ("add_photos", [None, [photo], 256, "vivid"]),
        "files as text": ("add_photos", [None, "photo.jpg", 256, 1.0]),
        "too few inputs": ("add_photos", [None]),
        "a photo chosen without its event": ("choose", [None, 256, 1.0]),
        "a preset not offered": ("lambda", ["neon"]),
        "hints not offered": ("remove", [None, ["1: x"], 256, 1.0]),
        "a click without its event": ("click", [None, "#ff0000", 256, 1.0]),
        "a hints file that was not uploaded": ("load_hints", [None, {**photo, "path": "/etc/hostname"}, 256, 1.0]),
    }
    for what, (fn, data) in refused.items():
        status, result = client.call(fn, data)
        assert status == 404 or result[0] == "error", (what, status, result)
        if status == 404:
            assert json.loads(result) == {"detail": f"no event {str(fn)!r} on this page"}, what
    for what, body in {"not JSON": b"{nope", "a list": b"[1, 2]", "100,000 levels deep":
                       b'{"fn_index": 0, "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                       "over a megabyte": b'{"fn_index": 0, "data": ["' + b"x" * (2 << 20) + b'"]}'}.items():
        assert client.post(body, "raw").status_code in (400, 413, 422), what
    console = console_since(log_path, start)
    assert "Traceback" not in console and "File \"" not in console
    lines = [line for line in console.splitlines() if line.startswith("page: refused a request: ")]
    assert len(lines) == len(refused) + 1, console  # + the body over a megabyte; the malformed ones are FastAPI's 4xx
    assert client.call("add_photos", [None, [photo], 256, 1.0])[1][0] == "ok"  # still working


def test_bad_colours_points_and_settings_on_a_photo_are_messages_on_the_page(page):
    client, log_path = page
    start = len(log_path.read_text())
    session, photo = uuid.uuid4().hex[:12], client.upload(PHOTO)
    status, (kind, text) = client.call("add_photos", [None, [photo], 256, 1.0], session=session)
    assert kind == "ok" and "481x321" in text
    click = {"value": None, "selected": True}
    messages = {
        "rgb(1e999,0,0)": ("click", [None, "rgb(1e999,0,0)", 256, 1.0], {**click, "index": [10, 10]}, "colour must be"),
        "rgb(1..2,0,0)": ("click", [None, "rgb(1..2,0,0)", 256, 1.0], {**click, "index": [10, 10]}, "colour must be"),
        "a point outside": ("click", [None, "#ff0000", 256, 1.0], {**click, "index": [10 ** 6, 5]}, "x must be"),
        "a point as text": ("click", [None, "#ff0000", 256, 1.0], {**click, "index": ["a", "b"]}, "click on the"),
        "three coordinates": ("click", [None, "#ff0000", 256, 1.0], {**click, "index": [1, 2, 3]}, "click on the"),
        "no hints file": ("load_hints", [None, None, 256, 1.0], None, "choose a hints file"),
    }
    for what, (fn, data, event, said) in messages.items():
        status, (kind, text) = client.call(fn, data, event, session=session)
        assert status == 200 and kind == "ok" and said in text and "\n" not in text.split("\n\n")[0], (what, text)
    nan = b'{"data": [null, 512, NaN], "fn_index": %d, "session_hash": "%s"}' % (client.events["settings_changed"],
                                                                                session.encode())
    status, (kind, text) = client.call(None, None, session=session, raw=nan)  # Python's JSON reads NaN
    assert kind == "ok" and "saturation must be a number in 0..2, got 'nan'" in text
    status, (kind, text) = client.call("click", [None, "rgb(200, 30, 30)", 256, 1.0], {**click, "index": [10, 10]},
                                       session=session)
    assert kind == "ok" and "Not applied" not in text  # the photo still takes a good hint
    console = console_since(log_path, start)
    assert "Traceback" not in console
