"""Average the generators of several fine-tunes of one model into one ("model soup", Wortsman et
al. 2022): fine-tunes that start from the same weights stay in one basin of the loss, and their
average is often better than each of them, at no cost at inference.

    python soup.py weights/soup.pt runs/a/checkpoint.pt runs/b/checkpoint.pt --about "what it saw"
    python colorize_base.py --eval ../shared/datasets/photos/val --weights weights/soup.pt

Ingredients are exported models or checkpoints (their EMA generators) with the same network
constants. Weights and batch-norm statistics are averaged; spectral norm's power-iteration vectors
are then recomputed for the averaged weights (averaged vectors would give a wrong norm). The result
is written like --export: float16, with the constants of the first ingredient.
"""
import argparse
import sys

import torch

import colorize_base as cb
from checkpoint import check_finite, check_network_constants, file_constants, generator_from, load_checkpoint, write_model
from files import OneLineParser, UserError, check_writable_target, display_name, refuse_inputs_as_output

POWER_ITERATIONS = 50  # enough for the vectors to settle from the averaged ones


def soup_state(paths):
    """The averaged EMA generator of the checkpoints at paths: (netG in eval mode, ckpts)."""
    if len(paths) < 2:
        raise UserError("a soup needs at least two models")
    ckpts = [load_checkpoint(p) for p in paths]
    for path, ckpt in zip(paths, ckpts):  # each file's own faults first, named as its own
        check_network_constants(ckpt["cfg"], path)

    def network(ckpt, key):
        return file_constants(ckpt, cb.CONSTANTS)[key]

    for path, ckpt in zip(paths[1:], ckpts[1:]):
        for k in cb.G_ARCH_KEYS + ("HINT_INPUT",):
            if network(ckpt, k) != network(ckpts[0], k):
                raise UserError(f"{path}: {k} is {network(ckpt, k)!r}, but {paths[0]} has "
                                f"{network(ckpts[0], k)!r}; only models with the same network can be averaged")
        check_finite(ckpt["netG_ema"], path, "generator")
        check_same_tensors(ckpt["netG_ema"], path, ckpts[0]["netG_ema"], paths[0])
    netG, _ = generator_from(ckpts[0], paths[0], torch.device("cpu"), defaults=cb.CONSTANTS)  # checks its own
    mean = {}
    for k, v in netG.state_dict().items():
        if v.is_floating_point():
            mean[k] = sum(c["netG_ema"][k].float() for c in ckpts) / len(ckpts)
        else:  # e.g. batch norm's counter of batches seen
            mean[k] = v
    netG.load_state_dict(mean)
    with torch.no_grad():
        for module in netG.modules():
            for sn in getattr(getattr(module, "parametrizations", None), "weight", []):
                sn.train()  # spectral norm runs its power iteration only in training mode
                for _ in range(POWER_ITERATIONS):
                    sn(module.parametrizations.weight.original)
                sn.eval()
    return netG.eval(), ckpts


def check_same_tensors(state, path, first, first_path):
    """UserError naming the ingredient and the tensor when state lacks one of first's tensors, has
    one more, or one of another shape or kind (whole numbers for floats): averaging those would broadcast
    into a corrupt model."""
    odd = sorted(first.keys() ^ state.keys())
    if odd:
        k = odd[0]
        has, lacks = (path, first_path) if k in state else (first_path, path)
        raise UserError(f"{path}: tensor {k!r} is in {has} but not in {lacks}; only models with the same "
                        f"network can be averaged")
    for k, v in first.items():
        if state[k].shape != v.shape:
            raise UserError(f"{path}: tensor {k!r} has shape {tuple(state[k].shape)}, but in {first_path} it has "
                            f"{tuple(v.shape)}; only models with the same network can be averaged")
        if state[k].is_floating_point() != v.is_floating_point():  # whole numbers averaged into weights: garbage
            raise UserError(f"{path}: tensor {k!r} is {state[k].dtype}, but in {first_path} it is {v.dtype}; "
                            f"only models with the same network can be averaged")


def main(argv=None):
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the averaged model to write (float16, like --export)")
    p.add_argument("models", nargs="+", help="exported models or checkpoints of the same network")
    p.add_argument("--about", metavar="TEXT", help="what the ingredients were trained on, stored in the file")
    args = p.parse_args(argv)
    try:
        refuse_inputs_as_output(args.out, args.models, "soup")  # before anything is read or written
        check_writable_target(args.out, "model")
        netG, ckpts = soup_state(args.models)
        about = args.about or " | ".join(c["about"] for c in ckpts if isinstance(c.get("about"), str) and c["about"])
        write_model(args.out, ckpts[0]["cfg"], max(c.get("step", 0) for c in ckpts), netG.state_dict(), about)
    except UserError as e:
        print(f"error: {display_name(str(e))}", file=sys.stderr)  # the names in it, escaped
        return 2
    print(f"wrote {display_name(args.out)}: the average of {len(args.models)} generators")
    return 0


if __name__ == "__main__":
    sys.exit(main())
