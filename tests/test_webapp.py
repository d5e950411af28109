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
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "colorize_base.py"), "--serve", "--port", str(port),
                               "--weights", weights, "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "2"})
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
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.get(url)
    from selenium.webdriver.common.by import By  # the page is built by script after it loads: wait for it
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), what="the page to be built")
    yield driver, url
    driver.quit()
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


def test_upload_colorize_hint_and_bad_file(page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    driver, url = page
    report = os.environ.get("WEBAPP_REPORT_DIR", str(tmp_path))  # timings and a screenshot land here
    # a 1024 px photo: a gray version of a colour scene, so the model has something to colour
    img = Image.fromarray(photo(1024, 768, seed=5)).convert("L").convert("RGB")
    img.save(tmp_path / "family.png")
    t = time.perf_counter()
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(tmp_path / "family.png"))
    src, result = shown_image(driver, url, "result")
    seconds_first = time.perf_counter() - t
    assert result.size == (1024, 768)
    c, _ = chroma(np.asarray(result))
    assert c.mean() > 1.0, "the result is gray"
    assert "family.png: 1024x768" in status_text(driver)

    # a red hint in the middle: the colour around it moves towards red (Lab a goes up)
    element = driver.find_element(By.CSS_SELECTOR, "#result img")
    shown_w, shown_h = element.size["width"], element.size["height"]
    x, y = 512, 384
    before_a = chroma(np.asarray(result))[1][y - 8:y + 8, x - 8:x + 8].mean()
    next(e for e in driver.find_elements(By.CSS_SELECTOR, "#presets label") if e.text == "brick red").click()
    t = time.perf_counter()
    ActionChains(driver).move_to_element_with_offset(element, (x + 0.5) * shown_w / 1024 - shown_w / 2,
                                                      (y + 0.5) * shown_h / 768 - shown_h / 2).click().perform()
    refused = "takes no colour hints"
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#hints label") or refused in status_text(driver),
             what="the hint to be listed (or refused)")
    assert refused not in status_text(driver)  # the bundled model was trained with hints
    src, hinted = shown_image(driver, url, "result", old_src=src)
    seconds_hint = time.perf_counter() - t
    hint_items = driver.find_elements(By.CSS_SELECTOR, "#hints label")
    assert len(hint_items) == 1
    hx, hy = (int(v) for v in hint_items[0].text.split("(")[1].split(")")[0].split(","))
    assert abs(hx - x) <= 2 and abs(hy - y) <= 2, hint_items[0].text  # a click lands within display rounding
    after_a = chroma(np.asarray(hinted))[1][y - 8:y + 8, x - 8:x + 8].mean()
    assert after_a > before_a + 5, (before_a, after_a)
    driver.save_screenshot(os.path.join(report, "webapp_screenshot.png"))

    # a file that is not an image: a message in the page, and the page keeps working
    (tmp_path / "broken.jpg").write_text("this is not a photo")
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(tmp_path / "broken.jpg"))
    wait_for(lambda: "broken.jpg" in status_text(driver), what="the bad-file message")
    assert "could not be colorized" in status_text(driver)
    Image.fromarray(photo(200, 150, seed=6)).save(tmp_path / "next.png")  # and the page still works
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(tmp_path / "next.png"))
    wait_for(lambda: "next.png: 200x150" in status_text(driver), what="the next photo")
    timings = (f"1024x768 photo, upload to result shown: {seconds_first:.2f} s\n"
               f"hint click to re-rendered result shown: {seconds_hint:.2f} s\n")
    print(timings)
    with open(os.path.join(report, "webapp_timings.txt"), "w") as f:
        f.write(timings)


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
