"""The web page keeps no photo on disk once it is done with it: the real --serve, in a subprocess whose
temp folder (TMPDIR) is the test's own, gets a photo through Gradio's HTTP API; "Forget these
photos", SIGTERM and Ctrl-C (SIGINT) must each leave no copy of it, and a folder left by a killed
server is removed at the next start."""
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import pytest
from PIL import Image

from conftest import REPO, photo, tiny_checkpoint

pytest.importorskip("gradio", reason="pip install -r requirements-ui.txt")
from gradio_client import Client, handle_file  # noqa: E402  (installed with gradio)

import webapp  # noqa: E402
from test_webapp import free_port  # noqa: E402


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names)


def copies_of(data, folder):
    """The files under folder whose bytes are data."""
    return [f for f in files_under(folder) if os.path.getsize(os.path.join(folder, f)) == len(data)
            and open(os.path.join(folder, f), "rb").read() == data]


def private_folders(tmp):
    return [n for n in os.listdir(tmp) if n.startswith(webapp.PRIVATE_PREFIX)]


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


@pytest.fixture
def server(tmp_path):
    """Start `--serve` with a tiny model, TMPDIR pointed at tmp_path/tmp: (process, url, tmp, log path)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    started = []

    def start():
        port, log = free_port(), tmp_path / "serve.log"
        weights = tiny_checkpoint(tmp_path / "tiny.pt")
        p = subprocess.Popen([sys.executable, os.path.join(REPO, "colorize_base.py"), "--serve", "--port", str(port),
                              "--weights", weights, "--device", "cpu"], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                             env={**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
        started.append(p)
        url, deadline = f"http://127.0.0.1:{port}", time.time() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                return p, url, str(tmp), log
            except OSError:
                if p.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the page did not start:\n{log.read_text()}")
                time.sleep(0.3)
    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


def upload(url, path):
    """Drop one photo on the page, as the browser does (Gradio's upload, then the upload event), and
    return the client, whose later calls are the same browser tab."""
    client = Client(url, download_files=False, verbose=False)
    client.predict([handle_file(str(path))], 256, 1.0, api_name="/add_photos")
    return client


def stop_and_check(p, sig, tmp, data, log):
    p.send_signal(sig)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server did not stop on {sig!r}:\n{log.read_text()}")
    assert private_folders(tmp) == [], (private_folders(tmp), log.read_text())
    assert copies_of(data, tmp) == []
    assert files_under(tmp) == [], log.read_text()  # nor Gradio's copies, nor the results: nothing at all


def test_forget_and_sigterm_leave_no_photo_and_start_removes_a_killed_servers_folder(server, tmp_path):
    Image.fromarray(photo(48, 40, seed=3)).save(tmp_path / "grandma.png")
    data = (tmp_path / "grandma.png").read_bytes()
    tmp = tmp_path / "tmp"  # made by the fixture
    killed = tmp / f"{webapp.PRIVATE_PREFIX}{dead_pid()}-x1"  # as a SIGKILLed server leaves it
    (killed / "gradio" / "abc").mkdir(parents=True)
    (killed / "gradio" / "abc" / "grandma.png").write_bytes(data)

    p, url, tmp, log = server()
    assert not killed.exists(), log.read_text()
    assert "the photos of a web page server that was killed" in log.read_text()
    (folder,) = private_folders(tmp)
    assert folder.startswith(f"{webapp.PRIVATE_PREFIX}{p.pid}-")
    assert stat.S_IMODE(os.stat(os.path.join(tmp, folder)).st_mode) == 0o700
    client = upload(url, tmp_path / "grandma.png")
    inside = os.path.join(tmp, folder)
    assert copies_of(data, inside), files_under(inside)  # Gradio's upload is in our folder...
    assert [f for f in files_under(tmp) if not f.startswith(folder + os.sep)] == []  # ...and nothing outside it
    shown = files_under(inside)
    assert len([f for f in shown if f.startswith("gradio" + os.sep)]) > 2, shown  # the upload and the copies shown

    client.predict(api_name="/forget")
    assert files_under(inside) == [], files_under(inside)  # its folder, its upload, Gradio's copies: all gone

    upload(url, tmp_path / "grandma.png")
    assert copies_of(data, inside)
    stop_and_check(p, signal.SIGTERM, tmp, data, log)


def test_ctrl_c_leaves_no_photo(server, tmp_path):
    Image.fromarray(photo(40, 32, seed=4)).save(tmp_path / "wedding.png")
    data = (tmp_path / "wedding.png").read_bytes()
    p, url, tmp, log = server()
    upload(url, tmp_path / "wedding.png")
    assert copies_of(data, tmp)
    stop_and_check(p, signal.SIGINT, tmp, data, log)


def test_stale_folders_of_dead_servers_are_removed_and_no_other(tmp_path):
    dead, old = dead_pid(), time.time() - webapp.LEGACY_STALE_S - 60
    made = {}
    for name, stale in ((f"{dead}-a1", True), (f"{os.getpid()}-b2", False), ("c3legacy", True),
                        ("d4legacy", False)):
        path = tmp_path / f"{webapp.PRIVATE_PREFIX}{name}"
        (path / "s").mkdir(parents=True)
        (path / "s" / "001_x.png").write_bytes(b"photo")
        made[path] = stale
    os.utime(tmp_path / f"{webapp.PRIVATE_PREFIX}c3legacy", (old, old))  # an older version's, long unused
    target = tmp_path / "not ours"
    target.mkdir()
    (tmp_path / f"{webapp.PRIVATE_PREFIX}{dead}-link").symlink_to(target)  # a link is never followed
    (tmp_path / "other-folder").mkdir()
    lines = []
    webapp.remove_stale_folders(str(tmp_path), log=lines.append)
    for path, stale in made.items():
        assert path.exists() != stale, path
    assert target.exists() and (tmp_path / f"{webapp.PRIVATE_PREFIX}{dead}-link").is_symlink()
    assert (tmp_path / "other-folder").exists() and len(lines) == 2, lines


def test_session_forget_removes_its_files_and_gradio_copies_but_not_the_users(tmp_path, monkeypatch, weights):
    from colorizer import Colorizer
    cache = tmp_path / "root" / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))
    root = tmp_path / "root"
    (cache / "h1").mkdir(parents=True)
    Image.fromarray(photo(40, 32, seed=1)).save(cache / "h1" / "a.png")  # as Gradio keeps an upload
    Image.fromarray(photo(40, 32, seed=2)).save(tmp_path / "mine.png")  # a path given in-process: the user's own
    app = webapp.build_app(Colorizer.load(weights, "cpu"), str(root))
    fns = {f.name: f.fn for f in app.fns.values()}
    session = list(fns["add_photos"](None, [str(cache / "h1" / "a.png"), str(tmp_path / "mine.png")], 256, 1.0))[-1][0]
    assert len(session.photos) == 2 and session.cached and os.listdir(session.folder)
    shown = fns["forget"](session)
    assert shown[0] is None and shown[-1] is None and "2 photos" in shown[-2]
    assert not os.path.exists(session.folder) and session.photos == []
    assert files_under(root) == [] and (tmp_path / "mine.png").exists()


def test_an_error_in_the_server_still_removes_the_folder(tmp_path, monkeypatch, weights):
    from colorizer import Colorizer
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "unset")  # restored after the test: serve() points it into its folder

    def broken(colorizer, root):
        assert os.path.isdir(root) and os.environ["GRADIO_TEMP_DIR"] == os.path.join(root, "gradio")
        open(os.path.join(root, "001_photo.png"), "wb").close()
        raise RuntimeError("the page broke")
    monkeypatch.setattr(webapp, "build_app", broken)
    with pytest.raises(RuntimeError, match="the page broke"):
        webapp.serve(Colorizer.load(weights, "cpu"), port=free_port())
    assert os.listdir(tmp_path) == []
