"""The checkpoint format: what a run's checkpoint.pt and an exported model file hold.

TrainState holds everything a training run changes, with the save/load pair that defines the
checkpoint keys; write_model writes the small file we ship. load_checkpoint reads either kind and
refuses anything malformed with a message naming the file; file_constants gives the constants a
file was made with, old files' missing ones filled in; load_generator rebuilds its generator.
"""
import io
import os
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from files import (ABSENT_MEANS, UserError, atomic_write, check_model_file, check_writable_target, describe_os_error, display_name,
                   refuse_inputs_as_output, short_reason)
from models import build_generator, with_new_branches

FORMAT_VERSION = 1


def save_checkpoint(obj, path, what="checkpoint"):
    """torch.save through atomic_write. Serialized in memory first: torch.save turns a failed write
    (a full disk) into an unhelpful RuntimeError, f.write keeps the OSError that says why."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()), what)


# -----------------------------------------------------------------------------
# Reading checkpoints and exported models

def load_checkpoint(path):
    """Read a checkpoint or exported model without running code from it (weights_only=True), and
    check the fields every reader relies on."""
    check_model_file(path)
    try:
        with warnings.catch_warnings(record=True) as caught:  # torch's, about a file it refuses or reads anyway
            warnings.simplefilter("always")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged file can fail anywhere inside the unpickler (KeyError, UnpicklingError...)
        raise UserError(f"{path}: not a readable checkpoint (truncated, damaged or not made by this tool): "
                        f"{short_reason(e)}") from None
    for message in dict.fromkeys(" ".join(str(w.message).split())[:150] for w in caught):  # each once, one line
        print(f"warning: {display_name(path)}: {message}", file=sys.stderr)
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("cfg"), dict) and isinstance(ckpt.get("netG_ema"), dict)):
        raise UserError(f"{path}: not a checkpoint of this tool (no 'cfg' / 'netG_ema' entries)")
    for key in ("format_version", "step"):
        value = ckpt.setdefault(key, 0)
        if type(value) is not int or value < 0:
            raise UserError(f"{path}: damaged checkpoint: {key} should be a whole number >= 0, got {value!r}")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code "
                        f"({FORMAT_VERSION}); update the code")
    bad = [k for k, v in ckpt["netG_ema"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: damaged checkpoint: netG_ema entry {bad[0]!r} is not a tensor")
    return ckpt


def file_constants(ckpt, defaults):
    """The constants a model file or checkpoint (read by load_checkpoint) was made with: its own; for
    a constant it predates, what that constant's absence meant (ABSENT_MEANS); else defaults (the
    current constants). Every reader of a file's constants goes through here."""
    return {**defaults, **ABSENT_MEANS, **ckpt["cfg"]}


def check_finite(state, path, what):
    """Refuse a state dict holding NaN or Inf: such a network paints every photo black."""
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: {what} weight {k!r} holds NaN or Inf values (a diverged or damaged "
                            f"model); use an earlier checkpoint")


def _is_bool(v):
    return type(v) is bool


# The constants that shape the generator, as a file must hold them: (test, what the value must be). A file whose
# constants fail these would build another network than its weights are for, or none (NGF "8", SPECTRAL_NORM "no").
NETWORK_CONSTANTS = {
    "ENCODER": (lambda v: isinstance(v, str), "the name of an encoder"),
    "NGF": (lambda v: type(v) is int and 1 <= v <= 1024, "a whole number in 1..1024"),
    "N_DOWNS": (lambda v: type(v) is int and 1 <= v <= 10, "a whole number in 1..10"),
    "ATTN_FACTORS": (lambda v: isinstance(v, (tuple, list)) and all(type(f) is int and f > 0 for f in v),
                     "a list of whole numbers"),
    "SPECTRAL_NORM": (_is_bool, "true or false"),
    "HINT_INPUT": (_is_bool, "true or false"),
    "HINT_DECODER": (_is_bool, "true or false"),
    "AB_CLASSES": (_is_bool, "true or false"),
    "ANNEALED_T": (lambda v: type(v) in (int, float) and 0.01 <= v <= 10, "a number in [0.01, 10]"),
    "DROPOUT": (lambda v: type(v) in (int, float) and 0 <= v < 1, "a number in [0, 1)"),
}


def check_network_constants(cfg, path):
    """UserError naming the file and the constant when one of the generator's constants in cfg has the
    wrong type or an impossible value."""
    for k, (ok, rule) in NETWORK_CONSTANTS.items():
        if k in cfg and not ok(cfg[k]):
            raise UserError(f"{path}: damaged model file: its constant {k} should be {rule}, got {cfg[k]!r}")


def check_fits(state, netG, path):
    """UserError naming the file and the tensor when a stored tensor is not the network's: missing, extra,
    of another shape, or whole numbers where the network has floats (load_state_dict would convert them)."""
    own = netG.state_dict()
    odd = sorted(own.keys() ^ state.keys())
    if odd:
        where = "missing from" if odd[0] in own else "not a tensor of the network, in"
        raise UserError(f"{path}: weights do not fit the network its constants describe (incompatible configuration): "
                        f"{odd[0]!r} is {where} the file")
    for k, v in own.items():
        if state[k].shape != v.shape or state[k].is_floating_point() != v.is_floating_point():
            raise UserError(f"{path}: weights do not fit the network its constants describe (incompatible configuration): {k!r} is "
                            f"{state[k].dtype} {tuple(state[k].shape)}, the network's is {v.dtype} {tuple(v.shape)}")


def load_generator(path, device, defaults=None):
    """The EMA generator stored in a checkpoint, rebuilt from the constants saved with it, in eval
    mode: (netG, cfg). defaults fills constants that older checkpoints did not store."""
    return generator_from(load_checkpoint(path), path, device, defaults)


def generator_from(ckpt, path, device, defaults=None):
    """load_generator for a checkpoint already read from path (load_checkpoint)."""
    cfg = file_constants(ckpt, defaults or {})
    check_network_constants(cfg, path)
    check_finite(ckpt["netG_ema"], path, "generator")
    try:
        netG = build_generator(cfg)
        check_fits(ckpt["netG_ema"], netG, path)
        netG.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["netG_ema"].items()})
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: weights do not fit the network its constants describe "
                        f"(incompatible configuration): {short_reason(e)}") from None
    return netG.to(device).eval().requires_grad_(False), cfg


def write_model(out, cfg, step, netG_state, about=None):
    """Write the file we ship: the constants and a generator's weights in float16, and about, a
    note on what the model was trained on."""
    small = {"format_version": FORMAT_VERSION, "cfg": cfg, "step": step,
             "netG_ema": {k: v.half() if v.is_floating_point() else v for k, v in netG_state.items()}}
    if about:
        small["about"] = about
    try:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder of {out}: {describe_os_error(e)}") from None
    save_checkpoint(small, out, "model")


def with_temperature(ckpt, annealed_t, path):
    """ckpt with its colour classes decoded at annealed_t (None: as they are); UserError for a model
    without colour classes, for which a temperature means nothing."""
    if annealed_t is None:
        return ckpt
    if not file_constants(ckpt, {})["AB_CLASSES"]:
        raise UserError(f"{path}: --annealed-t {annealed_t} is for a model with colour classes (AB_CLASSES); "
                        f"this one predicts ab directly")
    return {**ckpt, "cfg": {**ckpt["cfg"], "ANNEALED_T": annealed_t}}


def export(weights, out, about=None, annealed_t=None):
    """Keep only the EMA generator and the constants, in float16: the file we ship. about: a note on
    what the model was trained on (None keeps the one WEIGHTS has, if any); annealed_t: the temperature
    its colour classes are decoded at (None keeps WEIGHTS'). Returns its step.
    Refused before anything is read when out is weights itself (under any name) or not a regular file."""
    refuse_inputs_as_output(out, [weights], "--export file")
    check_writable_target(out, "model")
    ckpt = with_temperature(load_checkpoint(weights), annealed_t, weights)
    check_network_constants(ckpt["cfg"], weights)
    check_finite(ckpt["netG_ema"], weights, "generator")
    step = ckpt["step"]
    write_model(out, ckpt["cfg"], step, ckpt["netG_ema"], ckpt.get("about") if about is None else about)
    return step


# -----------------------------------------------------------------------------
# Training state

@dataclass
class TrainState:
    """Everything a training run changes, and so everything a checkpoint holds besides the
    constants and the RNG. The checkpoint keys are the field names."""
    netG: nn.Module
    netD: nn.Module
    netG_ema: nn.Module
    optG: torch.optim.Optimizer
    optD: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0            # generator steps taken (skipped non-finite steps do not count)
    epoch: int = 0
    batch_in_epoch: int = 0  # where in the epoch's permutation the next batch starts
    bad_steps: int = 0       # non-finite steps skipped so far

    MODULES = ("netG", "netD", "netG_ema", "optG", "optD", "scaler")
    COUNTERS = ("step", "epoch", "batch_in_epoch", "bad_steps")

    def init_generator(self, weights, path):
        """Start G and its EMA from the weights of a trained generator (fine-tuning). An automatic
        generator's weights fit a hint-taking one: its hint inputs start at zero."""
        try:
            weights = with_new_branches(weights, self.netG)
            for net in (self.netG, self.netG_ema):
                net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}: cannot start from it: {short_reason(e)}") from None

    def save(self, path, cfg, rng):
        """Write the whole state, the constants and the RNG state as one checkpoint file, atomically."""
        save_checkpoint({"format_version": FORMAT_VERSION, "cfg": cfg, "rng": rng,
                         **{k: getattr(self, k).state_dict() for k in self.MODULES},
                         **{k: getattr(self, k) for k in self.COUNTERS}}, path)

    def load(self, ckpt, path):
        """Restore from a checkpoint dict read by load_checkpoint; UserError when it is not a whole
        training state."""
        try:
            for k in self.MODULES:
                getattr(self, k).load_state_dict(ckpt[k])
            for k in self.COUNTERS:
                if type(ckpt.get(k, 0)) is not int:
                    raise TypeError(f"{k} is {ckpt[k]!r}, not a whole number")
                setattr(self, k, ckpt.get(k, 0))
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{path}: cannot resume from it (not a full training checkpoint: "
                            f"{short_reason(e)}); use another --run-dir or --fresh") from None
