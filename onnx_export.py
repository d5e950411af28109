"""--export model.onnx: the generator of a checkpoint or model file as an ONNX graph, for onnxruntime
(backends.OnnxNetwork: no PyTorch needed to colorize) and onnxruntime-web (web/).

The graph is the network alone, as backends.py calls it: L (1, 1, h, w) [+ hints (1, 3, h, w)] ->
ab (1, 2, h, w), with h and w any multiples of the network's stride. Decoding, Lab, the render size
and the full-resolution colour stay in colorizer.py (numpy), one definition for both engines.

Opset 18, the torch.export-based exporter's own (torch >= 2.9), which onnxruntime and
onnxruntime-web run in full. Before export, spectral norm is folded into the weights it
normalises (at inference it is a fixed division) and self-attention takes all queries in one block
(the block loop bounds torch's memory on huge renders, but would be unrolled to one trace's size).
With half=True the weights are stored in float16 and cast to float32 when the model is loaded, so
the file is half the size and computes in float32 like the torch model, whose shipped weights are
float16 already.
"""
import json
import os
import warnings

import torch
from torch.nn.utils import parametrize

from backends import ONNX_FORMAT_VERSION, ONNX_INPUTS, ONNX_METADATA, ONNX_OUTPUT
from checkpoint import check_finite, generator_from, load_checkpoint, with_temperature
from files import (UserError, atomic_write, check_writable_target, describe_os_error, make_folders, refuse_inputs_as_output,
                   short_reason)

OPSET = 18


def export_onnx(weights, out, about=None, half=True, annealed_t=None):
    """Write the EMA generator of WEIGHTS to out as ONNX (float16 weights with half), checked with
    onnx.checker and by running it once on onnxruntime against torch. Returns its step. annealed_t:
    as for checkpoint.export (the graph holds the temperature)."""
    try:
        import onnx  # optional: only for writing ONNX (requirements-onnx.txt), as onnxscript, torch's exporter's
        import onnxscript  # noqa: F401
    except ModuleNotFoundError as e:
        raise UserError(f"--export model.onnx needs the {e.name} package, which is not installed "
                        f"(pip install -r requirements-onnx.txt)") from None
    refuse_inputs_as_output(out, [weights], "--export file")
    check_writable_target(out, "model")
    ckpt = with_temperature(load_checkpoint(weights), annealed_t, weights)
    check_finite(ckpt["netG_ema"], weights, "generator")
    netG, cfg = generator_from(ckpt, weights, torch.device("cpu"))
    model = onnx_graph(netG, weights)
    if half:
        store_weights_in_float16(model)
    meta = {"format_version": ONNX_FORMAT_VERSION, "cfg": cfg, "step": ckpt["step"], "multiple": netG.multiple,
            "about": ckpt.get("about") if about is None else about}
    model.metadata_props.add(key=ONNX_METADATA, value=json.dumps(meta))
    model.producer_name = "colorizer"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise UserError(f"{weights}: the exported ONNX graph does not pass onnx.checker ({short_reason(e)})") from None
    data = model.SerializeToString()
    check_against_torch(data, netG, weights)
    try:  # its folder, as for a .pt export, once there is something to write
        make_folders(os.path.dirname(os.path.abspath(out)))
    except OSError as e:
        raise UserError(f"cannot create the folder of {out}: {describe_os_error(e)}") from None
    atomic_write(out, lambda f: f.write(data), "model")
    return ckpt["step"]


def onnx_graph(netG, weights):
    """The ONNX ModelProto of a generator in eval mode, with dynamic height and width (multiples of
    netG.multiple). netG is changed: spectral norm folded in, attention in one block."""
    for module in netG.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        if hasattr(module, "max_map_elements"):
            module.max_map_elements = 2 ** 62
    m = netG.multiple
    rows, cols = torch.export.Dim("rows", min=1, max=8192 // m), torch.export.Dim("cols", min=1, max=8192 // m)
    sides = {2: m * rows, 3: m * cols}
    L = torch.zeros(1, 1, 2 * m, 3 * m)
    args = (L, torch.zeros(1, netG.hint_channels, 2 * m, 3 * m)) if netG.hint_channels else (L,)
    names = list(ONNX_INPUTS[:len(args)])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        try:
            program = torch.onnx.export(netG, args, input_names=names, output_names=[ONNX_OUTPUT],
                                        dynamic_shapes=tuple(sides for _ in args), opset_version=OPSET,
                                        dynamo=True, verbose=False, report=False)
        except Exception as e:  # the exporter fails in many ways, each a long report
            raise UserError(f"{weights}: cannot export its generator to ONNX: {short_reason(e)}") from None
    return program.model_proto


def check_against_torch(data, netG, weights, tolerance=0.02):
    """Run the serialised graph once on onnxruntime (when installed) beside torch on a random
    luminance; UserError when their ab differ by more than tolerance anywhere."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        return
    m = netG.multiple
    L = torch.rand(1, 1, 2 * m, 3 * m, generator=torch.Generator().manual_seed(0)) * 2 - 1
    feeds = {ONNX_INPUTS[0]: L.numpy()}
    if netG.hint_channels:
        feeds[ONNX_INPUTS[1]] = torch.zeros(1, netG.hint_channels, 2 * m, 3 * m).numpy()
    ab = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        gap = float((torch.from_numpy(ab) - netG(L)).abs().max())
    if not gap <= tolerance:
        raise UserError(f"{weights}: the exported ONNX graph computes ab {gap:.3g} away from torch's; not written")


def store_weights_in_float16(model):
    """Every float32 weight of model stored as float16, with a Cast back to float32 in front of the
    graph: onnxruntime folds the casts when it loads the model, so it computes in float32."""
    import onnx
    from onnx import numpy_helper
    graph, casts, kept = model.graph, [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or len(init.dims) < 2:  # biases and scalars stay float32
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name + "_fp16")
        kept.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)

