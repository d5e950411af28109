"""--export model.onnx and the onnxruntime backend: the graph passes onnx.checker and computes what
torch does at any multiple of the stride, the Colorizer on it gives the torch Colorizer's pixels,
--infer runs without PyTorch, and a file that is not a colorizer ONNX model is refused in one line."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from backends import OnnxNetwork, TorchNetwork
from checkpoint import FORMAT_VERSION, load_generator, save_checkpoint
from colorizer import Colorizer
from conftest import REPO, photo, run_cli
from files import UserError
from hints import HintError
from models import build_generator

onnx = pytest.importorskip("onnx", reason="pip install -r requirements-onnx.txt")
pytest.importorskip("onnxruntime", reason="pip install -r requirements-lite.txt")
from onnx_export import export_onnx  # noqa: E402 (needs onnx)


def model_file(path, hint_input=True):
    """A tiny generator whose attention is switched on (gamma 0.5) and whose batch norms have
    non-trivial statistics, saved like an exported model."""
    import colorize_base as cb
    cfg = {**cb.CONSTANTS, "NGF": 8, "N_DOWNS": 3, "ATTN_FACTORS": (4,), "HINT_INPUT": hint_input}
    torch.manual_seed(0)
    netG = build_generator(cfg)
    state = netG.state_dict()
    for k, v in state.items():
        if k.endswith("gamma"):
            v.fill_(0.5)
        elif k.endswith("running_var"):
            v.uniform_(0.5, 2)
        elif k.endswith("running_mean"):
            v.uniform_(-0.2, 0.2)
        elif k.endswith("hint_in.weight"):
            v.normal_(0, 0.1)
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "step": 7, "netG_ema": state}, str(path))
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    pt = model_file(folder / "tiny.pt")
    for name, half in (("tiny.onnx", True), ("tiny32.onnx", False)):
        assert export_onnx(pt, str(folder / name), half=half) == 7
    return pt, str(folder / "tiny.onnx"), str(folder / "tiny32.onnx")


def test_an_automatic_model_exports_without_the_hints_input(tmp_path):
    pt = model_file(tmp_path / "auto.pt", hint_input=False)
    export_onnx(pt, str(tmp_path / "auto.onnx"))
    assert [i.name for i in onnx.load(str(tmp_path / "auto.onnx")).graph.input] == ["L"]
    by_torch, by_onnx = Colorizer.load(pt, device="cpu", render_size=24), Colorizer.load(tmp_path / "auto.onnx", render_size=24)
    assert not by_onnx.takes_hints
    a, b = (np.asarray(c.colorize(photo(30, 17)), dtype=int) for c in (by_torch, by_onnx))
    assert np.abs(a - b).max() <= 2
    with pytest.raises(HintError, match="takes no colour hints"):
        by_onnx.colorize(photo(30, 17), hints=[(1, 1, "#ff0000")])


def test_a_pretrained_encoder_with_decoder_hints_exports_and_computes_what_torch_does(tmp_path):
    import colorize_base as cb
    cfg = {**cb.CONSTANTS, "ENCODER": "efficientnet_lite0", "NGF": 8, "ATTN_FACTORS": (4,), "HINT_INPUT": True,
           "HINT_DECODER": True}
    torch.manual_seed(0)
    netG = build_generator(cfg)
    state = {k: v.normal_(0, 0.05) if "hint" in k else v for k, v in netG.state_dict().items()}
    pt, path = str(tmp_path / "lite.pt"), str(tmp_path / "lite.onnx")
    save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "step": 3, "netG_ema": state}, pt)
    export_onnx(pt, path, half=False)
    netG, cfg = load_generator(pt, torch.device("cpu"))
    L = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 96)).astype(np.float32)
    hints = np.zeros((1, 3, 64, 96), np.float32)
    hints[:, :, 20:23, 40:43] = np.array([0.3, -0.2, 1.0], np.float32)[:, None, None]
    want = TorchNetwork(netG, cfg, torch.device("cpu"))(L, hints)
    assert np.abs(want - TorchNetwork(netG, cfg, torch.device("cpu"))(L, None)).max() > 1e-3  # the hints matter
    assert np.abs(OnnxNetwork(path)(L, hints) - want).max() < 1e-4


def test_the_graph_passes_the_checker_and_holds_the_colorizer_metadata(models):
    _, half, full = models
    for path in (half, full):
        onnx.checker.check_model(onnx.load(path), full_check=True)
    network = OnnxNetwork(half)
    assert network.multiple == 8 and network.hint_channels == 3 and network.step == 7
    assert network.cfg["N_DOWNS"] == 3 and network.cfg["HINT_INPUT"] is True
    assert os.path.getsize(half) < 0.8 * os.path.getsize(full)  # float16 weights (the graph itself is most of a tiny file)


@pytest.mark.parametrize("h, w", [(8, 8), (16, 40), (48, 24), (72, 136)])
def test_the_graph_computes_what_torch_does_at_any_multiple_of_the_stride(models, h, w):
    pt, half, full = models
    netG, cfg = load_generator(pt, torch.device("cpu"))
    torch_net = TorchNetwork(netG, cfg, torch.device("cpu"))
    rng = np.random.default_rng(h * w)
    L = rng.uniform(-1, 1, (1, 1, h, w)).astype(np.float32)
    hints = np.zeros((1, 3, h, w), np.float32)
    hints[:, :, h // 2, w // 2] = (0.3, -0.2, 1.0)
    for given in (None, hints):
        want = torch_net(L, given)
        assert np.abs(OnnxNetwork(full)(L, given) - want).max() < 1e-5
        assert np.abs(OnnxNetwork(half)(L, given) - want).max() < 2e-2  # float16 storage of the folded weights


def test_the_onnx_colorizer_gives_the_torch_colorizers_pixels(models):
    pt, half, _ = models
    by_torch, by_onnx = Colorizer.load(pt, device="cpu", render_size=40), Colorizer.load(half, render_size=40)
    assert by_onnx.takes_hints and by_onnx.device == "cpu (onnxruntime)"
    rgba = np.dstack([photo(61, 35, seed=3), np.full((35, 61), 128, np.uint8)])
    cases = [(photo(90, 50), {}), (photo(33, 77, seed=1), {"hints": [(5, 9, "#c02020")]}),
             (photo(20, 20, seed=2), {"saturation": 1.5}), (Image.fromarray(rgba, "RGBA"), {})]
    for image, kw in cases:
        a = np.asarray(by_torch.colorize(image, **kw), dtype=int)
        b = np.asarray(by_onnx.colorize(image, **kw), dtype=int)
        assert a.shape == b.shape
        assert (np.abs(a - b) > 1).mean() <= 0.001, kw


def without_torch(*args, cwd):
    """python colorize_base.py ARGS in a process where importing anything requirements-lite.txt does
    not install (torch, torchvision, onnx, onnxscript, scikit-image, SciPy) fails, as in a venv made
    from requirements-lite.txt alone."""
    blocked = ", ".join(f"{name}=None" for name in ("torch", "torchvision", "onnx", "onnxscript", "skimage", "scipy"))
    code = (f"import runpy, sys; sys.modules.update({blocked}); sys.path.insert(0, {REPO!r}); "
            f"sys.argv = ['colorize_base.py', *{list(map(str, args))!r}]; "
            f"runpy.run_path({os.path.join(REPO, 'colorize_base.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_infer_runs_without_torch_and_the_rest_says_what_it_needs(models, tmp_path):
    pt, half, _ = models
    Image.fromarray(photo(50, 30)).convert("L").save(tmp_path / "old.png")
    p = without_torch("--infer", tmp_path / "old.png", "--weights", half, "--out", tmp_path / "out", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert Image.open(tmp_path / "out" / "old.png").size == (50, 30)
    # a .pt WEIGHTS runs as the .onnx beside it (the bundled weights/colorizer.pt -> colorizer.onnx)
    p = without_torch("--infer", tmp_path / "old.png", "--weights", pt, "--out", tmp_path / "out2", cwd=tmp_path)
    assert p.returncode == 0 and os.path.exists(tmp_path / "out2" / "old.png"), p.stderr
    # the README's first command, in the torch-free install: the bundled weights/colorizer.onnx
    example = os.path.join(REPO, "examples", "bsds_100007_gray.jpg")
    p = without_torch("--infer", example, "--out", tmp_path / "readme", cwd=REPO)
    assert p.returncode == 0 and Image.open(tmp_path / "readme" / "bsds_100007_gray.png").size == Image.open(example).size
    for mode in (["--train"], ["--eval", str(tmp_path)], ["--export", str(tmp_path / "x.pt")]):
        p = without_torch(*mode, "--weights", half, cwd=tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1 and "needs PyTorch" in p.stderr and "requirements.txt" in p.stderr


def test_the_bundled_model_has_its_onnx_export():
    onnx_file = os.path.join(REPO, "weights", "colorizer.onnx")
    network = OnnxNetwork(onnx_file)
    assert os.path.getsize(onnx_file) < 12e6  # float16 weights, as weights/colorizer.pt (21.5 MB in float32)
    netG, cfg = load_generator(os.path.join(REPO, "weights", "colorizer.pt"), torch.device("cpu"))
    assert network.cfg == cfg  # exported from it
    L = np.random.default_rng(0).uniform(-1, 1, (1, 1, 64, 128)).astype(np.float32)
    assert np.abs(network(L) - TorchNetwork(netG, cfg, torch.device("cpu"))(L)).max() < 2e-2


def colorizer_like(path, channels=1, meta="{}", out_channels=2):
    """A small ONNX graph with the colorizer's input and output names: ab = L repeated."""
    from onnx import TensorProto, helper
    graph = helper.make_graph(
        [helper.make_node("Concat", ["L"] * out_channels, ["ab"], axis=1)], "other",
        [helper.make_tensor_value_info("L", TensorProto.FLOAT, [1, channels, "h", "w"])],
        [helper.make_tensor_value_info("ab", TensorProto.FLOAT, [1, channels * out_channels, "h", "w"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    if meta is not None:
        model.metadata_props.add(key="colorizer", value=meta)
    onnx.save(model, str(path))


def test_files_that_are_not_colorizer_onnx_models_are_refused_in_one_line(models, tmp_path):
    from onnx import TensorProto, helper
    (tmp_path / "noise.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    identity = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])]))
    onnx.save(identity, str(tmp_path / "identity.onnx"))
    good_meta = '{"format_version": 1, "cfg": {}, "multiple": 8}'
    colorizer_like(tmp_path / "no_meta.onnx", meta=None)
    colorizer_like(tmp_path / "rgb_in.onnx", channels=3, meta=good_meta)     # the right names, the wrong shapes
    colorizer_like(tmp_path / "damaged.onnx", meta="{not json")
    colorizer_like(tmp_path / "newer.onnx", meta='{"format_version": 99, "cfg": {}, "multiple": 8}')
    colorizer_like(tmp_path / "fine.onnx", meta=good_meta)                   # the control: loads and runs
    assert Colorizer.load(tmp_path / "fine.onnx", render_size=16).colorize(photo(20, 12)).size == (20, 12)
    (tmp_path / "empty.onnx").write_bytes(b"")
    os.mkfifo(tmp_path / "fifo.onnx")
    os.mkdir(tmp_path / "folder.onnx")
    expect = {"noise.onnx": "not a readable ONNX model", "identity.onnx": "not a colorizer",
              "no_meta.onnx": "no colorizer metadata", "rgb_in.onnx": r"not a colorizer \(L tensor\(float\) \[1, 3",
              "damaged.onnx": "damaged colorizer metadata", "newer.onnx": "format 99 is newer than this code",
              "empty.onnx": "not a readable ONNX model", "fifo.onnx": "not a regular file",
              "folder.onnx": "is a folder", "missing.onnx": "does not exist"}
    for name, why in expect.items():
        with pytest.raises(UserError, match=why) as e:
            Colorizer.load(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value)
    Image.fromarray(photo(20, 20)).save(tmp_path / "p.png")
    for name in ("noise.onnx", "fifo.onnx"):  # the same through the command line: one line, nothing written
        p = run_cli("--infer", tmp_path / "p.png", "--weights", tmp_path / name, "--out", tmp_path / "out", timeout=60)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and str(tmp_path / name) in p.stderr, p.stderr
    assert not os.path.exists(tmp_path / "out")
    # --backend onnx with a .pt that has no .onnx beside it, torch with an .onnx, and CUDA with onnx
    lone = tmp_path / "lone.pt"
    lone.write_bytes(open(models[0], "rb").read())
    with pytest.raises(UserError, match="export one with --export model.onnx"):
        Colorizer.load(lone, backend="onnx")
    with pytest.raises(UserError, match="runs on --backend onnx"):
        Colorizer.load(models[1], backend="torch")
    with pytest.raises(UserError, match="the onnx backend runs on the CPU"):
        Colorizer.load(models[1], device="cuda")


def test_a_render_too_large_for_the_onnx_attention_map_is_refused_in_one_line(models):
    """The graph holds self-attention's whole map (torch computes it in blocks): past 1 GB it is refused."""
    with pytest.raises(UserError, match="render size 1104 px is too large for an ONNX model"):
        Colorizer.load(models[1], render_size=1100).colorize(photo(1100, 1100))


def test_cli_export_onnx_writes_a_model_that_infer_uses(models, tmp_path):
    pt = models[0]
    p = run_cli("--export", tmp_path / "m.onnx", "--weights", pt, timeout=300)
    assert p.returncode == 0 and "wrote" in p.stdout, p.stderr
    Image.fromarray(photo(24, 40)).save(tmp_path / "p.png")
    p = run_cli("--infer", tmp_path / "p.png", "--weights", tmp_path / "m.onnx", "--out", tmp_path / "out", timeout=60)
    assert p.returncode == 0 and Image.open(tmp_path / "out" / "p.png").size == (24, 40), p.stderr
    p = run_cli("--export", pt, "--weights", pt, timeout=60)  # never over its own input
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
