"""The network behind a Colorizer, on one of two engines, behind one call:

    network(L, hints=None) -> ab

L is (1, 1, h, w) float32 numpy in [-1, 1], h and w multiples of network.multiple; hints, for a
model that takes them (network.hint_channels = 3), is (1, 3, h, w) float32 (see hints.py); ab is
(1, 2, h, w) float32 in [-1, 1]. Everything before and after the network (decoding, Lab, the
render size, the full-resolution colour) is colorizer.py's, the same for both engines.

- TorchNetwork: a training checkpoint or an exported model (.pt) on a torch device.
- OnnxNetwork: an ONNX model (--export model.onnx) on onnxruntime's CPU engine. It needs only
  onnxruntime, numpy and Pillow (requirements-lite.txt), not PyTorch.
"""
import json
import os

import numpy as np

from files import ABSENT_MEANS, UserError, check_model_file, short_reason
from hints import HINT_CHANNELS

try:
    import torch
except ModuleNotFoundError:  # the torch-free install (requirements-lite.txt): ONNX models only
    torch = None

BACKENDS = ("auto", "torch", "onnx")
ONNX_INPUTS = ("L", "hints")   # the hints input only in a model trained with HINT_INPUT
ONNX_OUTPUT = "ab"
ONNX_METADATA = "colorizer"    # metadata_props key: JSON {"format_version", "cfg": the constants, "step", "multiple", "about"}
ONNX_FORMAT_VERSION = 1
MAX_ATTENTION_MAP = 2 ** 28     # the ONNX graph holds self-attention's whole map: 1 GB of float32 (render size 1024)


def set_threads(cfg):
    """CPU threads for either engine: THREADS, or the cores the 1-minute load average says are free
    (at least one). On a busy 2-core machine, threads beyond the free cores made each training step
    ~10x slower. Sets torch's when it is installed; returns the count, which OnnxNetwork takes."""
    n = cfg["THREADS"]
    if n == 0:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        n = max(1, (os.cpu_count() or 1) - int(busy + 0.5))
        if torch is not None:
            n = min(n, torch.get_num_threads())  # never more than torch (or OMP_NUM_THREADS) chose
    if torch is not None:
        torch.set_num_threads(n)
    return n


def pick_device(name="auto"):
    """torch.device for auto (CUDA when available), cpu, cuda or cuda:N; UserError for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def choose_backend(weights, backend="auto", device="auto"):
    """(backend, model file) for WEIGHTS, BACKEND and DEVICE: auto is onnx for an .onnx file and when
    PyTorch is not installed, else torch. The onnx backend given a .pt file uses the .onnx beside it
    (the bundled weights/colorizer.pt -> weights/colorizer.onnx). UserError when that cannot work."""
    if backend not in BACKENDS:
        raise UserError(f"--backend must be {', '.join(BACKENDS)}, got {backend!r}")
    check_model_file(weights)
    is_onnx = weights.lower().endswith(".onnx")
    if backend == "auto":
        backend = "onnx" if is_onnx or torch is None else "torch"
    if backend == "torch" and torch is None:
        raise UserError(f"{weights}: the torch backend needs PyTorch, which is not installed "
                        f"(pip install -r requirements.txt), or use an .onnx model")
    if backend == "torch" and is_onnx:
        raise UserError(f"{weights}: an ONNX model runs on --backend onnx (or auto), not torch")
    if backend == "onnx" and not is_onnx:
        beside = os.path.splitext(weights)[0] + ".onnx"
        if not os.path.exists(beside):
            how = "install PyTorch (pip install -r requirements.txt)" if torch is None else "use --backend torch"
            raise UserError(f"{weights}: not an ONNX model and there is no {os.path.basename(beside)} beside it; "
                            f"export one with --export model.onnx --weights {weights}, or {how}")
        weights = beside
    if backend == "onnx" and str(device) not in ("auto", "cpu"):
        raise UserError(f"--device {device}: the onnx backend runs on the CPU (use --backend torch for CUDA)")
    return backend, weights


class TorchNetwork:
    """A torch generator in eval mode on one device."""

    def __init__(self, netG, cfg, device):
        self.netG, self.cfg, self.device = netG, cfg, device
        self.multiple, self.hint_channels = netG.multiple, netG.hint_channels

    @property
    def threads(self):
        """CPU threads the work around the network may use too: torch's."""
        return torch.get_num_threads()

    @classmethod
    def load(cls, path, device="auto"):
        from checkpoint import load_generator  # torch's file format: not imported by the torch-free install
        device = pick_device(str(device))  # a torch.device too: the same check (meta, mps... are refused)
        netG, cfg = load_generator(path, device)
        return cls(netG, cfg, device)

    def __call__(self, L, hints=None):
        with torch.inference_mode():  # hints are passed only when given: a generator without them takes L alone
            x = torch.from_numpy(L).to(self.device)
            ab = self.netG(x) if hints is None else self.netG(x, torch.from_numpy(hints).to(self.device))
            return ab.float().cpu().numpy()

    def describe(self):
        return str(self.device)


class OnnxNetwork:
    """An ONNX model written by --export model.onnx, on onnxruntime's CPU engine."""

    def __init__(self, path, threads=0):
        try:
            import onnxruntime as ort  # optional: only for .onnx models
        except ModuleNotFoundError:
            raise UserError(f"{path}: ONNX models run on onnxruntime, which is not installed "
                            f"(pip install -r requirements-lite.txt)") from None
        check_model_file(path)
        options = ort.SessionOptions()
        self.threads = threads or os.cpu_count() or 1  # the work around the network uses as many
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads yield the CPU
        options.log_severity_level = 3  # onnxruntime's own warnings would print for every file
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for every kind of bad file
            raise UserError(f"{path}: not a readable ONNX model ({short_reason(e)})") from None
        inputs = {i.name: (i.type, i.shape) for i in self.session.get_inputs()}
        outputs = {o.name: (o.type, o.shape) for o in self.session.get_outputs()}
        want = {ONNX_INPUTS[0]: 1, ONNX_INPUTS[1]: HINT_CHANNELS, ONNX_OUTPUT: 2}  # channels of each
        meta = self.session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA)
        fits = (ONNX_INPUTS[0] in inputs and set(inputs) <= set(ONNX_INPUTS) and list(outputs) == [ONNX_OUTPUT]
                and all(kind == "tensor(float)" and len(shape) == 4 and shape[1] == want[name]
                        for name, (kind, shape) in {**inputs, **outputs}.items()))
        if not fits or meta is None:
            found = ", ".join(f"{name} {kind} {shape}" for name, (kind, shape) in {**inputs, **outputs}.items())
            raise UserError(f"{path}: an ONNX model, but not a colorizer ({found}{'' if meta else '; no colorizer metadata'}; "
                            f"export one with --export model.onnx)")
        try:
            meta = json.loads(meta)
            self.cfg = {**ABSENT_MEANS, **{k: tuple(v) if isinstance(v, list) else v for k, v in meta["cfg"].items()}}
            self.multiple, version = int(meta["multiple"]), int(meta["format_version"])
            self.attention = min(self.cfg.get("ATTN_FACTORS") or (0,))  # the finest level with attention; 0: none
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{path}: damaged colorizer metadata ({short_reason(e)})") from None
        if version > ONNX_FORMAT_VERSION:
            raise UserError(f"{path}: colorizer ONNX format {version} is newer than this code ({ONNX_FORMAT_VERSION}); "
                            f"update the code")
        self.step, self.about = meta.get("step"), meta.get("about")
        self.hint_channels = HINT_CHANNELS if ONNX_INPUTS[1] in inputs else 0
        self.device = "cpu"

    def __call__(self, L, hints=None):
        if self.attention and (L.shape[2] * L.shape[3] // self.attention ** 2) ** 2 > MAX_ATTENTION_MAP:
            raise UserError(f"render size {max(L.shape[2:])} px is too large for an ONNX model: its self-attention "
                            f"map would take over {MAX_ATTENTION_MAP * 4 // 2 ** 30} GB (at most 1024 px, or "
                            f"--backend torch, which computes it in blocks)")
        feeds = {ONNX_INPUTS[0]: L}
        if self.hint_channels:  # the graph always takes hints: none is all zeros, the automatic colorizer
            feeds[ONNX_INPUTS[1]] = np.zeros((1, self.hint_channels, *L.shape[2:]), np.float32) if hints is None else hints
        return self.session.run([ONNX_OUTPUT], feeds)[0]

    def describe(self):
        return "cpu (onnxruntime)"

