"""How the pieces are wired, where each piece alone is pinned elsewhere (issue 25): which loss of
the D step sees which pair, which generator draws the sample grids and how their rows are laid
out, which hint the page's "remove ticked" removes, old checkpoints read through file_constants,
the pixel limit checked before decoding, and outputs compared as real files."""
import csv
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image, ImageFile

import colorize_base as cb
import runtime
import training
from checkpoint import ABSENT_MEANS, load_checkpoint, load_generator, save_checkpoint
from colorizer import Colorizer
from conftest import TINY_ARGS, make_photos, photo, run_cli, tiny_cfg, tiny_checkpoint
from images import BadImageError, lab_to_net, lab_to_rgb, net_to_lab, open_image, rgb_to_lab, without_colour

CPU = torch.device("cpu")


def photos_and_cfg(tmp_path, steps, *extra):
    """8 photos of 48x40 (too few to hold any out: the grid shows training photos) and a tiny config."""
    data = make_photos(tmp_path / "data", n=8, size=(48, 40))
    return tiny_cfg(data, tmp_path / "run", steps, *extra)


# -----------------------------------------------------------------------------
# 1. The D step: the real pair is trained towards "real", the fake pair towards "fake"

class MarkingD(nn.Module):
    """A stand-in discriminator that tells the real pairs (whose ab is real_B) from all others, and
    gives them known logits: w + 0.25 for a real pair, -w - 0.5 for any other. w is its one
    parameter, so the sign of its update says which way D was trained."""

    def __init__(self, real_B):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.real_B = real_B

    def forward(self, x):
        ab = x[:, 1:].float()
        real = torch.tensor([float(any(torch.equal(a, r) for r in self.real_B)) for a in ab])
        sign = (2 * real - 1).view(-1, 1, 1, 1)  # +1 real, -1 fake
        logits = sign * self.w + torch.where(sign > 0, 0.25, -0.5)
        return [[logits.clone(), logits]]  # one scale: one "intermediate feature" and the patch map


def test_d_step_trains_the_real_pair_as_real_and_the_fake_pair_as_fake(tmp_path):
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1)
    assert cfg["GAN_MODE"] == "hinge" and cfg["NOGAN_STEPS"] == 0
    torch.manual_seed(0)
    state = cb.build_state(cfg, CPU)
    batch = torch.from_numpy(np.stack([photo(32, 32, seed=s) for s in (1, 2)])).permute(0, 3, 1, 2).contiguous()
    _, real_B = training.net_batch(batch, CPU, cfg)
    state.netD = MarkingD(real_B.float())
    state.optD = torch.optim.Adam(state.netD.parameters(), lr=0.1, betas=(cfg["BETA1"], cfg["BETA2"]))
    ok, losses = training.step(state, batch, cfg)
    assert ok
    loss_D_real, loss_D_fake = losses[0].item(), losses[1].item()
    # hinge, at w = 0: real relu(1 - 0.25) = 0.75, fake relu(1 + (-0.5)) = 0.5 (swapped labels: 1.25, 1.5)
    assert loss_D_real == pytest.approx(0.75) and loss_D_fake == pytest.approx(0.5), (loss_D_real, loss_D_fake)
    # raising w raises D(real) and lowers D(fake): D learnt to tell them apart, not the reverse
    assert state.netD.w.item() > 0.05, state.netD.w.item()


# -----------------------------------------------------------------------------
# 2. and 3. The sample grid: drawn by the EMA generator, one row per image: gray | prediction | truth

def read_grid(path, n, h, w, pad=2):
    """The cells of a grid written by save_sample_grid (nrow=3, padding 2): [row][column] uint8 arrays."""
    grid = np.asarray(Image.open(path).convert("RGB"))[runtime.GRID_HEADER:]  # below the column labels
    assert grid.shape == (pad + n * (h + pad), pad + 3 * (w + pad), 3), grid.shape
    return [[grid[pad + i * (h + pad):pad + i * (h + pad) + h, pad + j * (w + pad):pad + j * (w + pad) + w]
             for j in range(3)] for i in range(n)]


def to_uint8(rgb):
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounded as save_image rounds."""
    return rgb.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def close(a, b, tol=1):
    return np.abs(a.astype(int) - b.astype(int)).max() <= tol


def test_sample_grid_of_a_training_run_is_drawn_by_the_ema_generator(tmp_path, monkeypatch):
    cfg = photos_and_cfg(tmp_path, 1)
    calls = []

    def recording(net, sample_rgb, path, device):
        calls.append((net, net.training, sample_rgb.clone(), path))
        return runtime.save_sample_grid(net, sample_rgb, path, device)
    monkeypatch.setattr(cb, "save_sample_grid", recording)
    assert cb.train(cfg) == 1
    assert len(calls) == 1
    net, training_mode, sample_rgb, path = calls[0]
    assert not training_mode, "the grid was drawn by a generator in train mode"
    ckpt = load_checkpoint(os.path.join(cfg["RUN_DIR"], "checkpoint.pt"))
    drawn = net.state_dict()
    assert all(torch.equal(drawn[k], ckpt["netG_ema"][k]) for k in drawn), "not the EMA generator's weights"
    assert not all(torch.equal(ckpt["netG"][k], ckpt["netG_ema"][k]) for k in drawn)  # the two differ after a step
    # and the picture: its prediction column is what the checkpoint's EMA generator predicts
    ema, _ = load_generator(os.path.join(cfg["RUN_DIR"], "checkpoint.pt"), CPU)
    rgb = sample_rgb.float() / 255
    real_A, _ = lab_to_net(rgb_to_lab(rgb))
    with torch.no_grad():
        expected = lab_to_rgb(net_to_lab(real_A, ema(real_A)))
    n, _, h, w = sample_rgb.shape
    cells = read_grid(path, n, h, w)
    for i in range(n):
        assert close(cells[i][1], to_uint8(expected[i])), f"row {i}: the prediction is not the EMA generator's"


class ConstantAB(nn.Module):
    """A stand-in generator: ab = (0.3, -0.2) everywhere, whatever the input."""

    def forward(self, real_A, hints=None):
        ab = torch.tensor([0.3, -0.2]).view(1, 2, 1, 1)
        return ab.expand(real_A.shape[0], 2, *real_A.shape[2:])


def test_sample_grid_rows_are_gray_prediction_truth_of_one_image(tmp_path):
    h, w = 12, 16
    images = [photo(w, h, seed=s) for s in (3, 4, 5)]
    images[1] = (images[1] * 0.4).astype(np.uint8)  # a darker one: every cell of every row differs
    sample_rgb = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    path = str(tmp_path / "grid.png")
    runtime.save_sample_grid(ConstantAB(), sample_rgb, path, CPU)
    cells = read_grid(path, len(images), h, w)
    rgb = sample_rgb.float() / 255
    real_A, _ = lab_to_net(rgb_to_lab(rgb))
    predicted = lab_to_rgb(net_to_lab(real_A, ConstantAB()(real_A)))
    gray = without_colour(rgb)
    for i, image in enumerate(images):
        assert close(cells[i][0], to_uint8(gray[i])), f"row {i}, column 1 is not the gray of image {i}"
        assert close(cells[i][1], to_uint8(predicted[i])), f"row {i}, column 2 is not the prediction for image {i}"
        assert close(cells[i][2], image), f"row {i}, column 3 is not image {i}"


# -----------------------------------------------------------------------------
# 4. The web page: "remove ticked" removes the ticked hint and keeps the others

def test_page_removes_the_ticked_hint_and_keeps_the_other(tmp_path):
    pytest.importorskip("gradio")
    import webapp
    colorizer = Colorizer.load(tiny_checkpoint(tmp_path / "hints.pt", HINT_INPUT=True), "cpu")
    app = webapp.build_app(colorizer)
    fns = {f.name: f.fn for f in app.fns.values()}  # the page's event handlers, as the browser calls them
    Image.fromarray(photo(40, 32, seed=1)).save(tmp_path / "a.png")
    two = [(5, 6, "#ff0000"), (30, 20, "#0000ff")]
    (tmp_path / "two.hints.json").write_text(json.dumps({"hints": [{"x": x, "y": y, "color": c} for x, y, c in two]}))
    for ticked, kept in ((0, 1), (1, 0)):
        session = list(fns["add_photos"](None, [str(tmp_path / "a.png")], 256, 1.0))[-1][0]
        shown = fns["load_hints"](session, str(tmp_path / "two.hints.json"), 256, 1.0)
        labels = shown[5]["choices"]  # the hint list's ticks, as the page shows them
        labels = [c[0] if isinstance(c, (tuple, list)) else c for c in labels]
        assert len(labels) == 2 and session.photo()["hints"] == two, (labels, shown[-1])
        shown = fns["remove"](session, [labels[ticked]], 256, 1.0)
        assert session.photo()["hints"] == [two[kept]], (ticked, session.photo()["hints"], shown[-1])
        remaining = [c[0] if isinstance(c, (tuple, list)) else c for c in shown[5]["choices"]]
        assert len(remaining) == 1 and f"({two[kept][0]}, {two[kept][1]})" in remaining[0], remaining


# -----------------------------------------------------------------------------
# 5. A checkpoint made before some constants existed: resumed, fine-tuned from and used as it was

def strip_constants(path, keys):
    """Rewrite a checkpoint as an older version would have written it: without these constants."""
    ckpt = load_checkpoint(path)
    ckpt["cfg"] = {k: v for k, v in ckpt["cfg"].items() if k not in keys}
    save_checkpoint(ckpt, path)
    assert not set(keys) & set(load_checkpoint(path)["cfg"])


def test_checkpoint_without_later_constants_resumes_and_serves_as_init_and_for_infer(tmp_path, capsys):
    cfg = photos_and_cfg(tmp_path, 1)
    assert cb.train(cfg) == 1
    old = os.path.join(cfg["RUN_DIR"], "checkpoint.pt")
    strip_constants(old, set(ABSENT_MEANS) | {"HINT_INPUT", "EXPOSURE", "MOSAIC", "ENCODER"})
    capsys.readouterr()
    assert cb.train({**cfg, "MAX_STEPS": 2}) == 2  # resumed, not refused as "a different network"
    assert "resumed from" in capsys.readouterr().out
    assert load_checkpoint(old)["step"] == 2
    strip_constants(old, set(ABSENT_MEANS))
    data = cfg["DATA_DIR"]
    args = ["--train", *TINY_ARGS, "--data", data, "--steps", "1", "--device", "cpu", "--init", old]
    assert cb.main([*args, "--run-dir", str(tmp_path / "tuned")]) == 0, capsys.readouterr().err
    assert "fine-tuning from" in capsys.readouterr().out
    assert load_checkpoint(str(tmp_path / "tuned" / "checkpoint.pt"))["step"] == 1
    # --init from it, adding hint inputs to the (automatic) old model
    assert cb.main([*args, "--run-dir", str(tmp_path / "hinted"), "--hint-input", "true"]) == 0, capsys.readouterr().err
    assert "with new branches starting at zero: hint_in" in capsys.readouterr().out
    assert cb.main(["--infer", data, "--weights", old, "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert len(os.listdir(tmp_path / "out")) == 8


def test_every_reader_takes_a_model_file_without_hint_input(tmp_path, capsys):
    """The live report: 'a checkpoint whose constants lack HINT_INPUT is refused (HINT_INPUT=None (now
    False))'. Each reader of a file's constants: --infer (Colorizer.load), --export, soup.py; resume
    and --init are in the test above."""
    import soup
    paths = []
    for i in range(2):
        path = tiny_checkpoint(tmp_path / f"m{i}.pt")
        strip_constants(path, set(ABSENT_MEANS))
        paths.append(path)
    Image.fromarray(photo(32, 32, seed=1)).save(tmp_path / "p.png")
    assert not Colorizer.load(paths[0], "cpu").takes_hints
    assert cb.main(["--export", str(tmp_path / "small.pt"), "--weights", paths[0]]) == 0, capsys.readouterr().err
    assert cb.main(["--infer", str(tmp_path / "p.png"), "--weights", str(tmp_path / "small.pt"),
                    "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert soup.main([str(tmp_path / "soup.pt"), *paths]) == 0, capsys.readouterr().err
    assert cb.main(["--infer", str(tmp_path / "p.png"), "--weights", str(tmp_path / "soup.pt"),
                    "--out", str(tmp_path / "out2"), "--device", "cpu"]) == 0, capsys.readouterr().err


def test_soup_reads_a_missing_constant_as_what_its_absence_meant(tmp_path, monkeypatch):
    """A file without HINT_INPUT was made before hints existed: an automatic model, whatever the
    default of HINT_INPUT becomes. The soup must agree with generator_from, which builds it so."""
    import soup
    old = tiny_checkpoint(tmp_path / "old.pt")
    strip_constants(old, {"HINT_INPUT"})
    new = tiny_checkpoint(tmp_path / "new.pt", HINT_INPUT=False)
    monkeypatch.setitem(cb.CONSTANTS, "HINT_INPUT", True)  # the default changes one day
    netG, _ = soup.soup_state([old, new])
    assert not netG.hint_channels


# -----------------------------------------------------------------------------
# 6. The pixel limit is checked on the header, before any pixel is decoded

def png_with_garbage_data(path, w, h):
    """A PNG whose header says w x h RGB but whose image data is garbage: decoding it fails."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", b"not zlib data at all" * 4) + chunk(b"IEND", b""))


def test_pixel_limit_refuses_before_decoding_the_pixels(tmp_path, monkeypatch):
    big = str(tmp_path / "big.png")
    Image.fromarray(photo(80, 80, seed=1)).save(big)
    decoded = []
    real_load = ImageFile.ImageFile.load

    def recording_load(self, *a, **k):
        decoded.append(self.size)
        return real_load(self, *a, **k)
    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    with pytest.raises(BadImageError, match="over the limit of 5000"):
        open_image(big, 5000)
    assert decoded == [], "the pixels were decoded before the limit was checked"
    with open_image(big, 6400) as img:  # at the limit: read (and so decoded) as usual
        assert img.size == (80, 80)
    assert decoded
    monkeypatch.undo()
    # a file whose header is over the limit and whose data cannot be decoded: refused for its size
    garbage = str(tmp_path / "garbage.png")
    png_with_garbage_data(garbage, 100, 100)
    with pytest.raises(BadImageError, match="10000 pixels is over the limit of 5000"):
        open_image(garbage, 5000)
    with pytest.raises(BadImageError) as e:  # under the limit, the same file fails on its data
        open_image(garbage, 20000)
    assert "over the limit" not in str(e.value)


# -----------------------------------------------------------------------------
# 7. --infer's outputs, compared as real files: never two outputs in one file, never over an input

def colour_of(path, weights):
    return np.asarray(Colorizer.load(weights, "cpu").colorize(path))


def two_photos(folder):
    """x.jpg and x.png in folder, different photos: their outputs would both be named x.png."""
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(photo(32, 24, seed=1)).save(os.path.join(folder, "x.jpg"), quality=95)
    Image.fromarray(photo(32, 24, seed=2)[::-1].copy()).save(os.path.join(folder, "x.png"))
    return [os.path.join(folder, "x.jpg"), os.path.join(folder, "x.png")]


def assert_outputs_are(outputs, inputs, weights):
    """Each output file exists and holds the colorization of its own input."""
    assert len({os.path.realpath(o) for o in outputs}) == len(outputs), outputs
    for out, src in zip(outputs, inputs):
        assert os.path.isfile(out), f"{out} missing; folder holds {sorted(os.listdir(os.path.dirname(out)))}"
        assert close(np.asarray(Image.open(out)), colour_of(src, weights)), f"{out} is not the colour of {src}"


def test_infer_out_through_a_symlink_keeps_both_outputs(tmp_path):
    weights = tiny_checkpoint(tmp_path / "w.pt")
    inputs = two_photos(str(tmp_path / "in"))
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    p = run_cli("--infer", *inputs, "--out", tmp_path / "link", "--weights", weights, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path / "real")) == ["x.png", "x_1.png"]
    assert_outputs_are([str(tmp_path / "real" / "x.png"), str(tmp_path / "real" / "x_1.png")], inputs, weights)


def test_infer_out_a_symlink_to_the_inputs_folder_never_replaces_an_input(tmp_path):
    weights = tiny_checkpoint(tmp_path / "w.pt")
    inputs = two_photos(str(tmp_path / "in"))
    before = [open(f, "rb").read() for f in inputs]
    os.symlink(tmp_path / "in", tmp_path / "link")
    for spelled in (inputs, [str(tmp_path / "in")], [str(tmp_path / "link")]):  # files, the folder, the link
        out = tmp_path / "link"
        for f in os.listdir(tmp_path / "in"):  # the outputs of the previous round
            if f not in ("x.jpg", "x.png"):
                os.remove(tmp_path / "in" / f)
        assert cb.main(["--infer", *spelled, "--out", str(out), "--weights", weights, "--device", "cpu"]) == 0
        assert [open(f, "rb").read() for f in inputs] == before, f"an input was replaced ({spelled})"
        assert sorted(os.listdir(tmp_path / "in")) == ["x.jpg", "x.png", "x_1.png", "x_2.png"], spelled
        assert_outputs_are([str(tmp_path / "in" / "x_1.png"), str(tmp_path / "in" / "x_2.png")], inputs, weights)
    # --out holds x.png, a hard link of the input x.png: that name of the input is kept too
    (tmp_path / "out").mkdir()
    os.link(inputs[1], tmp_path / "out" / "x.png")
    assert cb.main(["--infer", *inputs, "--out", str(tmp_path / "out"), "--weights", weights, "--device", "cpu"]) == 0
    assert open(tmp_path / "out" / "x.png", "rb").read() == before[1]
    assert sorted(os.listdir(tmp_path / "out")) == ["x.png", "x_1.png", "x_2.png"]
    assert_outputs_are([str(tmp_path / "out" / "x_1.png"), str(tmp_path / "out" / "x_2.png")], inputs, weights)


def test_infer_mirrored_folders_that_are_one_real_folder_keep_both_outputs(tmp_path):
    """--out holds a symlink A -> B, and the inputs' folders A/ and B/ are mirrored there: the outputs
    out/A/x.png and out/B/x.png are one file, so one of them must be renamed."""
    weights = tiny_checkpoint(tmp_path / "w.pt")
    jpg = two_photos(str(tmp_path / "src" / "A"))[0]
    png = two_photos(str(tmp_path / "src" / "B"))[1]
    os.remove(tmp_path / "src" / "A" / "x.png")
    os.remove(tmp_path / "src" / "B" / "x.jpg")
    (tmp_path / "out" / "B").mkdir(parents=True)
    os.symlink("B", tmp_path / "out" / "A")
    assert cb.main(["--infer", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--weights", weights,
                    "--device", "cpu"]) == 0
    assert sorted(os.listdir(tmp_path / "out" / "B")) == ["x.png", "x_1.png"]
    assert_outputs_are([str(tmp_path / "out" / "A" / "x.png"), str(tmp_path / "out" / "B" / "x_1.png")],
                       [jpg, png], weights)


def test_a_log_of_an_older_version_keeps_its_rows_under_the_new_columns(tmp_path):
    """Resuming a run whose log.csv has fewer loss columns (written before loss_G_perc and loss_G_CF)
    rewrites it with the new header, each old row under its own names and the new columns empty."""
    path = tmp_path / "log.csv"
    old = ["step", "epoch", "loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_FM", "loss_G_L1", "loss_G_VGG",
           "bad_steps", "images_per_s", "data_wait_s"]
    path.write_text(",".join(old) + "\n1,0,1,2,3,4,5,6,0,7,8\n2,0,1,2,3,4,5,6,0,7,8\n3,0,9,9,9,9,9,9,0,9,9\n")
    runtime.CSVLog(str(path), step=2)
    rows = list(csv.DictReader(open(path, newline="")))
    assert list(rows[0]) == list(runtime.CSVLog.COLUMNS) and len(rows) == 2  # the row past the checkpoint dropped
    assert rows[1]["loss_G_L1"] == "5" and rows[1]["images_per_s"] == "7" and rows[1]["loss_G_CF"] == ""


def test_page_reference_photo_guides_the_photo_and_a_gray_one_is_a_message(tmp_path):
    pytest.importorskip("gradio")
    import webapp
    colorizer = Colorizer.load(tiny_checkpoint(tmp_path / "hints.pt", HINT_INPUT=True), "cpu")
    fns = {f.name: f.fn for f in webapp.build_app(colorizer).fns.values()}
    rgb = photo(64, 48, seed=2)
    Image.fromarray(rgb).convert("L").save(tmp_path / "a.png")
    Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).save(tmp_path / "ref.png")  # its colour mirror: it matches
    session = list(fns["add_photos"](None, [str(tmp_path / "a.png")], 256, 1.0))[-1][0]
    shown = fns["set_reference"](session, str(tmp_path / "ref.png"), 256, 1.0)
    assert session.reference == str(tmp_path / "ref.png") and session.photo()["settings"][2] == session.reference
    want = colorizer.colorize(str(tmp_path / "a.png"), render_size=256, saturation=1.0, reference=str(tmp_path / "ref.png"))
    assert np.array_equal(np.asarray(session.photo()["colour"]), np.asarray(want)), shown[-1]
    shown = fns["set_reference"](session, str(tmp_path / "a.png"), 256, 1.0)  # a gray photo has no colour to give
    assert "Reference not used" in shown[-1] and "already gray" in shown[-1] and session.reference is None
    assert session.photo()["settings"][2] is None  # re-rendered without it
