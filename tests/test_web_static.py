"""The static page web/index.html, driven in headless Chromium: photos colorized by onnxruntime-web
in the browser match Colorizer.colorize in Python, nothing is requested from anywhere but the page's
own origin, and a bad photo or a bad model gets a one-line message. Needs selenium, Debian's
chromium and chromium-driver, and onnxruntime-web in web/vendor/ (python web/fetch_ort.py); without
them the test skips and says what to run (in CI it fails). Nothing is downloaded at run time.

The model is $WEB_MODEL when set, else weights/colorizer.onnx, else one exported into a temporary
folder from weights/colorizer.pt with --export."""
import base64
import functools
import http.server
import importlib.util
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import CHROMEDRIVER, CHROMIUM, REPO

HOW = "pip install selenium && sudo apt-get install chromium chromium-driver"
DEFAULT_MODEL = os.path.join(REPO, "weights", "colorizer.onnx")  # what the page loads by itself


def load_fetch_ort():
    spec = importlib.util.spec_from_file_location("fetch_ort", os.path.join(REPO, "web", "fetch_ort.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def vendor_missing():
    if not load_fetch_ort().present():
        return "onnxruntime-web is not in web/vendor/; to run it: python web/fetch_ort.py (needs the network)"
    return None


def browser_or_skip():
    conftest.browser_or_skip("static page test", [], HOW, also=vendor_missing)


class Server:
    """The repository served over HTTP on 127.0.0.1, in a thread, as `python -m http.server` would."""

    def __init__(self):
        self.paths = []
        paths = self.paths

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_request(self, code="-", size="-"):
                paths.append(self.path)

            def log_message(self, format, *args):  # quiet: the test reports what matters
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=REPO))
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(condition, timeout=60, what="the page"):
    t = time.time()
    while time.time() - t < timeout:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def model_file(tmp_path_factory):
    """The .onnx model to test, and whether the page loads it by itself (it is weights/colorizer.onnx)."""
    if os.environ.get("WEB_MODEL"):
        return os.path.abspath(os.environ["WEB_MODEL"]), False
    if os.path.exists(DEFAULT_MODEL):
        return DEFAULT_MODEL, True
    path = str(tmp_path_factory.mktemp("model") / "colorizer.onnx")
    done = subprocess.run([sys.executable, os.path.join(REPO, "colorize_base.py"), "--export", path,
                           "--weights", os.path.join(REPO, "weights", "colorizer.pt")],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not os.path.exists(path):
        pytest.fail(f"could not export weights/colorizer.pt to ONNX for the page:\n{done.stdout}{done.stderr}")
    return path, False


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """(driver, server, model path): web/index.html open in headless Chromium with the model loaded."""
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    model, by_itself = model_file(tmp_path_factory)
    server = Server()
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(server.origin + "/web/")
        settled = wait_for(lambda: status(driver).startswith(("ready", "no model at")) and status(driver),
                           what="the page to load its default model")
        if by_itself:
            assert settled.startswith("ready"), settled
        else:
            load_model(driver, model)
            assert status(driver).startswith("ready"), status(driver)
        yield driver, server, model
    finally:
        driver.quit()
        server.close()


def load_model(driver, path):
    """Pick the model file at path and wait until the page has loaded or refused it."""
    pick(driver, "model-file", path)
    name = os.path.basename(path)  # in the status while loading ("loading the model ..."), then ready or why not
    wait_for(lambda: name in status(driver) and not status(driver).startswith("loading"),
             what=f"the page to load {name}")


def status(driver):
    return driver.execute_script("return document.getElementById('status').textContent")


def pick(driver, input_id, path):
    from selenium.webdriver.common.by import By
    driver.find_element(By.ID, input_id).send_keys(str(path))


def figures(driver):
    return driver.execute_script("return document.querySelectorAll('#results figure').length")


def colorize_in_page(driver, path):
    """(PIL image of the page's download, seconds the page says it took) for the photo at path."""
    n = figures(driver)
    pick(driver, "photo-file", path)
    wait_for(lambda: figures(driver) > n or "not colorized" in status(driver), what=f"{path} to be colorized")
    assert figures(driver) == n + 1, status(driver)
    png = driver.execute_async_script("""
        const done = arguments[0];
        const link = document.querySelector('#results figure a[download]');
        fetch(link.href).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ''; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b);
          done([link.download, btoa(s)]);
        });""")
    seconds = float(driver.execute_script("return document.querySelector('#results figure').dataset.seconds"))
    assert png[0] == os.path.splitext(os.path.basename(path))[0] + "_colour.png"
    return Image.open(io.BytesIO(base64.b64decode(png[1]))), seconds


def assert_only_own_origin(driver, server):
    """Every request the browser made (its performance log, since the last call) went to the server."""
    urls = [json.loads(entry["message"])["message"]["params"]["request"]["url"]
            for entry in driver.get_log("performance")
            if json.loads(entry["message"])["message"]["method"] == "Network.requestWillBeSent"]
    assert urls, "the performance log holds no requests"
    away = [u for u in urls if not u.startswith((server.origin + "/", "data:", "blob:"))]
    assert not away, f"the page requested URLs outside {server.origin}: {away}"
    return urls


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Test photos in the awkward sizes, as (path, size shown (W, H))."""
    folder = tmp_path_factory.mktemp("photos")
    gray = Image.open(os.path.join(REPO, "examples", "bsds_100007_gray.jpg"))
    out = []
    gray.resize((200, 150), Image.LANCZOS).save(folder / "small.png")  # under the render size: never enlarged
    out.append((folder / "small.png", (200, 150)))
    # 512x301: render 256 x 150.5 -> 150 (Python rounds halves to even); part of it half transparent
    rgba = Image.open(os.path.join(REPO, "examples", "bsds_157032_gray.jpg")).resize((512, 301)).convert("RGBA")
    alpha = np.full((301, 512), 255, np.uint8)
    alpha[:40, -60:] = 128
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(folder / "half_even.png")
    out.append((folder / "half_even.png", (512, 301)))
    # a JPEG stored 173x97 with EXIF orientation 6: shown (and colorized) turned upright, 97x173
    exif = Image.Exif()
    exif[0x0112] = 6
    gray.resize((173, 97), Image.LANCZOS).save(folder / "turned.jpg", quality=95, exif=exif)
    out.append((folder / "turned.jpg", (97, 173)))
    big = Image.open(os.path.join(REPO, "examples", "bsds_69000_gray.jpg")).resize((1024, 1024), Image.BICUBIC)
    big.save(folder / "big.png")  # the time to report
    out.append((folder / "big.png", (1024, 1024)))
    return out


def test_page_colorizes_like_python_and_stays_on_its_origin(page, photos):
    from colorizer import Colorizer
    driver, server, _ = page
    colorizer = Colorizer.load(os.path.join(REPO, "weights", "colorizer.pt"), device="cpu")
    report = []
    for path, size in photos:
        shown, seconds = colorize_in_page(driver, path)
        expected = colorizer.colorize(str(path))
        assert shown.size == size == expected.size, (path, shown.size, expected.size)
        mode = "RGBA" if expected.mode == "RGBA" else "RGB"
        got, want = np.asarray(shown.convert(mode), np.int16), np.asarray(expected.convert(mode), np.int16)
        if mode == "RGBA":
            assert (got[..., 3] == want[..., 3]).all(), f"{path.name}: alpha not kept"
        diff = np.abs(got[..., :3] - want[..., :3])
        mean = diff.mean(axis=(0, 1))
        # off by more than 2 where opaque (a canvas keeps the rest premultiplied, losing a level or two)
        off = (diff.max(axis=2) > 2)[want[..., 3] == 255 if mode == "RGBA" else slice(None)].mean()
        report.append(f"{path.name} {size[0]}x{size[1]}: {seconds:.2f} s in the page, |page - Python| mean "
                      f"{', '.join(f'{m:.3f}' for m in mean)} (R, G, B), max {diff.max()} of 255, "
                      f"{off:.2%} of opaque pixels off by more than 2")
        assert (mean <= 2).all(), report[-1]
        assert off < 0.001, report[-1]  # what catches a render size rounded the other way (1.3 mean, 17% off)
    print("\n" + "\n".join(report))
    assert "model: " in driver.execute_script("return document.getElementById('model').textContent")
    urls = assert_only_own_origin(driver, server)
    assert any(u.endswith(".wasm") for u in urls) and any(p.startswith("/web/vendor/") for p in server.paths)


def with_metadata(model, value):
    """The bytes of an ONNX model whose metadata_props (ModelProto field 14) is {"colorizer": value}
    alone, rewritten at the protobuf level: every other top-level field is copied as it is."""
    def varint(n):
        out = bytearray()
        while True:
            out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    def read_varint(pos):
        n = shift = 0
        while True:
            b = data[pos]
            n, shift, pos = n | (b & 0x7F) << shift, shift + 7, pos + 1
            if not b & 0x80:
                return n, pos

    def string(field, raw):
        return varint(field << 3 | 2) + varint(len(raw)) + raw

    data, out, pos = open(model, "rb").read(), bytearray(), 0
    while pos < len(data):
        start = pos
        tag, pos = read_varint(pos)
        if tag & 7 == 0:
            pos = read_varint(pos)[1]
        elif tag & 7 == 2:
            n, pos = read_varint(pos)
            pos += n
        else:
            pos += {1: 8, 5: 4}[tag & 7]
        if tag >> 3 != 14:
            out += data[start:pos]
    return bytes(out + string(14, string(1, b"colorizer") + string(2, json.dumps(value).encode())))


def test_page_follows_the_models_metadata(page, photos, tmp_path):
    from colorizer import Colorizer
    driver, server, model = page
    expected_colorizer = Colorizer.load(os.path.join(REPO, "weights", "colorizer.pt"), device="cpu", render_size=128,
                                        saturation=1.0)
    meta = {"multiple": expected_colorizer.network.multiple, "render_size": 128, "saturation": 1.0, "about": "a test"}
    (tmp_path / "meta.onnx").write_bytes(with_metadata(model, meta))
    load_model(driver, tmp_path / "meta.onnx")
    text = driver.execute_script("return document.getElementById('model').textContent")
    assert "render size 128, saturation 1," in text, (text, status(driver))
    path = photos[0][0]
    shown, _ = colorize_in_page(driver, path)
    expected = expected_colorizer.colorize(str(path))
    diff = np.abs(np.asarray(shown.convert("RGB"), np.int16) - np.asarray(expected, np.int16))
    assert diff.mean() <= 2 and (diff.max(axis=2) > 2).mean() < 0.001, (diff.mean(), diff.max())
    assert_only_own_origin(driver, server)


def test_bad_photo_and_bad_model_get_one_line_each(page, tmp_path):
    driver, server, _ = page
    # a file that is not an image, dropped on the page
    driver.execute_script("""
        const dt = new DataTransfer();
        dt.items.add(new File(['this is not a photo'], 'notes.txt', {type: 'text/plain'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                             cancelable: true}));""")
    text = wait_for(lambda: "notes.txt" in status(driver) and status(driver), what="the bad-photo message")
    assert "not an image" in text and "\n" not in text, text
    # a model file that is not ONNX: refused, and the loaded model is kept
    (tmp_path / "broken.onnx").write_bytes(b"this is not a model" * 100)
    load_model(driver, tmp_path / "broken.onnx")
    text = status(driver)
    assert "not an ONNX model" in text and "still using" in text and "\n" not in text, text
    shown, _ = colorize_in_page(driver, os.path.join(REPO, "examples", "bsds_246009_gray.jpg"))  # still works
    assert shown.size == (321, 481)
    assert_only_own_origin(driver, server)


def test_fetch_ort_refuses_a_changed_tarball_and_says_what_to_run_offline(monkeypatch, capsys):
    fetch_ort = load_fetch_ort()

    class Response(io.BytesIO):
        def __enter__(self):
            return self

    monkeypatch.setattr(fetch_ort.urllib.request, "urlopen", lambda url, timeout: Response(b"not the package"))
    with pytest.raises(ValueError, match="refused"):
        fetch_ort.download()

    def offline(url, timeout):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(fetch_ort.urllib.request, "urlopen", offline)
    monkeypatch.setattr(fetch_ort, "present", lambda: False)
    assert fetch_ort.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no network" in err and "python web/fetch_ort.py" in err, err
