"""The web page (--serve), driven end to end in headless Chromium: upload photos, wait for the
colour result, click a colour hint, load a bad file. Needs requirements-ui.txt and Debian's chromium
and chromium-driver packages (installed by .ci/run); on a machine without them the test skips and
says how to install them. Nothing is downloaded at run time."""
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

import conftest
from conftest import CHROMEDRIVER, CHROMIUM, REPO, photo

HOW = "pip install -r requirements-ui.txt && sudo apt-get install chromium chromium-driver"


def browser_or_skip():
    conftest.browser_or_skip("browser test", ["gradio"], HOW)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The served page (the bundled model, unless WEBAPP_WEIGHTS names another) open in headless Chromium."""
    browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    port = free_port()
    weights = os.environ.get("WEBAPP_WEIGHTS", os.path.join(REPO, "weights", "colorizer.pt"))
    folder = tmp_path_factory.mktemp("serve")
    log, tmp = open(folder / "serve.log", "w+"), folder / "tmp"
    tmp.mkdir()
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "colorize_base.py"), "--serve", "--port", str(port),
                               "--weights", weights, "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "2", "TMPDIR": str(tmp)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.time() > deadline:
                log.seek(0)
                pytest.fail(f"the page did not start:\n{log.read()}")
            time.sleep(0.5)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get(url)
    from selenium.webdriver.common.by import By  # the page is built by script after it loads: wait for it
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), what="the page to be built")
    yield driver, url, server, str(tmp)
    driver.quit()
    if server.poll() is None:
        server.terminate()
        server.wait(timeout=30)


def wait_for(condition, timeout=60, what="the page"):
    t = time.time()
    while time.time() - t < timeout:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def shown_image(driver, url, elem_id, old_src=None):
    """(src, PIL image) of the picture in element elem_id, once it shows one other than old_src."""
    from selenium.webdriver.common.by import By

    def src():
        imgs = driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} img")
        s = imgs[0].get_attribute("src") if imgs else None
        return s if s and s != old_src else None
    s = wait_for(src, what=f"an image in #{elem_id}")
    data = urllib.request.urlopen(s if s.startswith("http") else url + "/" + s.lstrip("/")).read()
    return s, Image.open(io.BytesIO(data)).convert("RGB")


def chroma(rgb_array):
    import torch

    from images import rgb_to_lab
    lab = rgb_to_lab(torch.from_numpy(rgb_array.astype(np.float32) / 255).permute(2, 0, 1)[None])[0]
    return lab[1:].norm(dim=0).numpy(), lab[1].numpy()


def status_text(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, "status").text


def drop(driver, *paths):
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys("\n".join(map(str, paths)))


def thumbnails(driver):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, "#thumbs img")


def on_screen(driver, css):
    """Whether the element is shown and wholly inside the 1400x1000 window, without scrolling."""
    from selenium.webdriver.common.by import By
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    if not elements or not elements[0].is_displayed():
        return False
    r = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.top, r.bottom, r.left, "
                              "r.right, window.innerHeight, window.innerWidth];", elements[0])
    return r[0] >= 0 and r[1] <= r[4] and r[2] >= 0 and r[3] <= r[5] and r[1] - r[0] > 100


def click_at(driver, css, x, y, w, h):
    """Click the image in element css at photo pixel (x, y) of a w x h photo."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    element = driver.find_element(By.CSS_SELECTOR, css)
    sw, sh = element.size["width"], element.size["height"]
    ActionChains(driver).move_to_element_with_offset(element, (x + 0.5) * sw / w - sw / 2,
                                                      (y + 0.5) * sh / h - sh / 2).click().perform()


def test_the_page_one_screen_thumbnails_hint_mode_undo_remove_and_sigterm(page, tmp_path):
    """Three photos dropped; before / after on one screen; clicks add hints only in hint mode, with a
    marker, and undo takes one back; removing a photo updates the strip and the zip; SIGTERM leaves
    no photo on disk. Timings and screenshots go to WEBAPP_REPORT_DIR (default: the test's folder)."""
    import zipfile

    from selenium.webdriver.common.by import By
    driver, url, server, tmp = page
    report = os.environ.get("WEBAPP_REPORT_DIR", str(tmp_path))
    names = {"family.png": (1152, 864), "scan.png": (4160, 3120), "street.png": (400, 300)}  # 1 MP, 13 MP, small
    for k, (name, (w, h)) in enumerate(names.items()):
        Image.fromarray(photo(w, h, seed=5 + k)).convert("L").convert("RGB").save(tmp_path / name)
    timings = {}

    t = time.perf_counter()
    drop(driver, tmp_path / "family.png")
    src, shown = shown_image(driver, url, "compare")
    timings["1 MP photo, drop to result shown"] = time.perf_counter() - t
    wait_for(lambda: "family.png: 1152x864, colorized" in status_text(driver), what="the first photo")
    assert on_screen(driver, "#compare") and on_screen(driver, "#upload"), "before / after must fit the window"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#compare img")) == 2  # before and after, one slider
    assert not any(e.is_displayed() for e in driver.find_elements(By.ID, "result"))  # not the same photo twice
    c, _ = chroma(np.asarray(urllib_image(url, driver.find_elements(By.CSS_SELECTOR, "#compare img")[1])))
    assert c.mean() > 1.0, "the result is gray"
    driver.save_screenshot(os.path.join(report, "webapp_one_screen.png"))

    t = time.perf_counter()
    drop(driver, tmp_path / "scan.png")
    wait_for(lambda: "scan.png: 4160x3120, preview" in status_text(driver), timeout=120, what="the 13 MP preview")
    timings["13 MP photo, drop to preview shown"] = time.perf_counter() - t
    wait_for(lambda: "scan.png: 4160x3120, colorized" in status_text(driver), timeout=120, what="the 13 MP photo")
    timings["13 MP photo, drop to full result shown"] = time.perf_counter() - t
    drop(driver, tmp_path / "street.png")
    wait_for(lambda: len(thumbnails(driver)) == 3 and "street.png: 400x300" in status_text(driver), what="3 thumbnails")

    # hint mode off: a click on the photo adds nothing
    thumbnails(driver)[0].click()
    wait_for(lambda: "family.png: 1152x864" in status_text(driver), what="the first photo again")
    click_at(driver, "#compare", 576, 432, 1152, 864)
    time.sleep(1.5)
    assert not driver.find_elements(By.CSS_SELECTOR, "#hints label") and "Hint" not in status_text(driver)

    # hint mode on: one click, one hint, its marker drawn; undo takes it back
    driver.find_element(By.CSS_SELECTOR, "#hint-mode input[type=checkbox]").click()
    wait_for(lambda: on_screen(driver, "#result"), what="the photo to click on")
    assert not any(e.is_displayed() for e in driver.find_elements(By.ID, "compare"))
    next(e for e in driver.find_elements(By.CSS_SELECTOR, "#presets label") if e.text == "sky blue").click()
    before, _ = shown_image(driver, url, "result")
    t = time.perf_counter()
    click_at(driver, "#result", 576, 432, 1152, 864)
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#hints label")) == 1, what="the hint to be listed")
    _, marked = shown_image(driver, url, "result", old_src=before)
    timings["1 MP photo, hint click to re-rendered result"] = time.perf_counter() - t
    label = driver.find_element(By.CSS_SELECTOR, "#hints label").text
    hx, hy = (int(v) for v in label.split("(")[1].split(")")[0].split(","))
    assert abs(hx - 576) <= 2 and abs(hy - 432) <= 2, label
    assert np.abs(np.asarray(marked, int)[hy, hx] - (0x6a, 0x9f, 0xd8)).max() <= 3  # the marker: a dot of its colour
    driver.save_screenshot(os.path.join(report, "webapp_hint_mode.png"))
    driver.find_element(By.ID, "undo-hint").click()
    wait_for(lambda: not driver.find_elements(By.CSS_SELECTOR, "#hints label"), what="the hint to be undone")

    thumbnails(driver)[1].click()  # the 13 MP scan: a hint there
    wait_for(lambda: "scan.png: 4160x3120" in status_text(driver), what="the scan")
    before, _ = shown_image(driver, url, "result")
    t = time.perf_counter()
    click_at(driver, "#result", 2080, 1560, 4160, 3120)
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#hints label")) == 1, timeout=120, what="the scan's hint")
    shown_image(driver, url, "result", old_src=before)
    timings["13 MP photo, hint click to re-rendered result"] = time.perf_counter() - t
    driver.find_element(By.CSS_SELECTOR, "#hint-mode input[type=checkbox]").click()  # hint mode off again

    # remove the photo in view: the strip and the zip agree
    driver.find_element(By.ID, "remove-photo").click()
    wait_for(lambda: len(thumbnails(driver)) == 2 and "Removed scan.png" in status_text(driver), what="the removal")
    link = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#download a"), what="the download")[0]
    href = link.get_attribute("href")
    data = urllib.request.urlopen(href if href.startswith("http") else url + "/" + href.lstrip("/")).read()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert sorted(n.split("_", 1)[1] for n in z.namelist()) == ["family.png", "street.png"], z.namelist()

    # a file that is not an image: a message, said once, and the page keeps working
    (tmp_path / "broken.jpg").write_text("this is not a photo")
    drop(driver, tmp_path / "broken.jpg")
    wait_for(lambda: "broken.jpg" in status_text(driver), what="the bad-file message")
    assert "could not be colorized" in status_text(driver) and len(thumbnails(driver)) == 2
    Image.fromarray(photo(200, 150, seed=9)).save(tmp_path / "next.png")
    drop(driver, tmp_path / "next.png")
    wait_for(lambda: "next.png: 200x150" in status_text(driver), what="the next photo")
    assert "broken.jpg" not in status_text(driver) and len(thumbnails(driver)) == 3

    text = "".join(f"{k}: {v:.2f} s\n" for k, v in timings.items())
    print(text)
    with open(os.path.join(report, "webapp_timings.txt"), "w") as f:
        f.write(text)
    server.terminate()  # SIGTERM: no photo the page saw is left on disk
    server.wait(timeout=30)
    left = [os.path.join(d, f) for d, _, fs in os.walk(tmp) for f in fs]
    assert left == [], left


def urllib_image(url, element):
    s = element.get_attribute("src")
    return Image.open(io.BytesIO(urllib.request.urlopen(s if s.startswith("http") else url + "/" + s.lstrip("/")).read())
                      ).convert("RGB")


def test_serve_without_gradio_says_what_to_install(monkeypatch, weights):
    import webapp
    from colorizer import Colorizer
    from files import UserError
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(UserError, match="pip install -r requirements-ui.txt"):
        webapp.serve(Colorizer.load(weights, "cpu"))


def test_download_zip_is_rebuilt_only_when_a_photo_changes(tmp_path):
    import zipfile

    from webapp import Session
    session = Session(str(tmp_path))
    session.photos = [{"name": "a.jpg"}, {"name": "b.jpg"}]
    for i in range(2):
        Image.fromarray(photo(8, 8, seed=i)).save(session.output_path(i))
    path = session.download()
    built = os.stat(path).st_mtime_ns
    os.utime(path, ns=(built - 10**9, built - 10**9))  # marks this build: a rebuild would replace the time
    assert session.download() == path and os.stat(path).st_mtime_ns == built - 10**9  # a view: no rebuild
    Image.fromarray(photo(8, 8, seed=7)).save(session.output_path(1))  # b re-rendered
    os.utime(session.output_path(1), ns=(built + 10**9, built + 10**9))
    session.download()
    with zipfile.ZipFile(path) as z:
        assert z.namelist() == ["001_a.png", "002_b.png"]
        assert z.read("002_b.png") == open(session.output_path(1), "rb").read()


def test_serve_on_a_port_in_use_says_so_in_one_line_naming_port(weights):
    pytest.importorskip("gradio", reason="pip install -r requirements-ui.txt")
    from conftest import run_cli
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = run_cli("--serve", "--port", port, "--weights", weights, "--device", "cpu", timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.count("\n") == 1 and f"--port {port}" in p.stderr and "already in use" in p.stderr
    p = run_cli("--serve", "--port", 0, "--weights", weights, timeout=120)
    assert p.returncode == 2 and "--port must be in 1..65535" in p.stderr, p.stderr
