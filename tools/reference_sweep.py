"""Choose reference.py's palette constants on pairs of photos (tools/reference_pairs.py's pairing):
each photo is colorized once per reference up to the palette, and the palette is then laid on with
each setting of PALETTE_SIMILARITY, MAX_SPREAD and PALETTE_CHROMA, so a setting costs no network run.

    python tools/reference_sweep.py --weights weights/colorizer.pt --data /work/shared/datasets/photos/train --n 60

Run it on photos/train and report on photos/val (tools/reference_pairs.py): a knob is never tuned on the
set it is reported on. The matched hints are those of the current constants (a lower PALETTE_SIMILARITY
also loosens the cell matching a little, through MIN_SIMILARITY_ALIKE; the sweep leaves that out).
It prints, per setting: the Jensen-Shannon divergence of the same-kind result's ab histogram to its
reference's (and the automatic result's), the CIEDE2000 of the unrelated-reference result to the
automatic one (under 2 is "close"), and PSNR / CIEDE2000 / false colour of the truth-aug result.
"""
import argparse
import itertools
import os
import pickle
import sys
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference  # noqa: E402
from colorizer import Colorizer  # noqa: E402
from images import gray_version, lab_to_rgb, net_to_lab, rgb_to_lab  # noqa: E402
from metrics import ciede2000_lab, colorfulness, image_metrics  # noqa: E402
from reference_pairs import ab_histogram, choose_pairs, js_divergence  # noqa: E402


def before_palette(colorizer, gray, ref):
    """Colorize gray with the reference, stopping before the palette: (ab (1, 2, h, w), the Guide)."""
    seen = {}

    def record(fake_B, guide):
        seen.update(fake_B=fake_B.copy(), guide=guide)
        return fake_B
    laid, reference.apply_palette = reference.apply_palette, record
    try:
        colorizer.colorize(gray, reference=ref)
    finally:
        reference.apply_palette = laid
    return seen["fake_B"], seen["guide"]


def to_rgb(L, ab):
    return lab_to_rgb(net_to_lab(L, ab))[0].transpose(1, 2, 0)


def lab_of(rgb):
    return rgb_to_lab(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0].transpose(1, 2, 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="weights/colorizer.pt")
    parser.add_argument("--data", default="/work/shared/datasets/photos/train")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--saturation", type=float, default=None)
    parser.add_argument("--starts", default="", help="comma-separated similarities where the palette begins "
                        "(default: the encoder's PALETTE_SIMILARITY start and some below)")
    parser.add_argument("--widths", default="0.2", help="comma-separated: full = start + width")
    parser.add_argument("--spreads", default="1.0,1.5,2.0")
    parser.add_argument("--chromas", default="8:20,4:12")
    parser.add_argument("--hint-gates", default="0", help="comma-separated: the palette is also laid fully at this "
                        "many matched hints, in proportion below (0: by similarity alone)")
    parser.add_argument("--cache", help="keep the colorized pairs in this file and read them from it next time")
    args = parser.parse_args()
    torch.set_num_threads(1)
    colorizer = Colorizer.load(args.weights, device="cpu", render_size=256,
                               **({} if args.saturation is None else {"saturation": args.saturation}))
    kind = reference.encoder_kind(colorizer.network.netG)
    start0, full0 = reference.PALETTE_SIMILARITY[kind]
    starts = [float(s) for s in args.starts.split(",")] if args.starts else [start0 - 0.2, start0 - 0.1, start0]
    widths = [float(s) for s in args.widths.split(",")]
    spreads = [float(s) for s in args.spreads.split(",")]
    chromas = [tuple(float(v) for v in c.split(":")) for c in args.chromas.split(",")]

    gates = [float(s) for s in args.hint_gates.split(",")]
    cases = []
    if args.cache and os.path.exists(args.cache):
        with open(args.cache, "rb") as f:
            cases = pickle.load(f)
    for path, truth, same, other in ([] if cases else choose_pairs(args.data, args.n, 256)):
        gray = gray_version(truth)
        rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode()))
        refs = {"truth-aug": reference.augmented_truth(truth, rng), "same-kind": same, "unrelated": other}
        L = np.asarray(reference.photo_L(gray, 256))
        auto = np.asarray(colorizer.colorize(gray), np.float32) / 255
        cases.append({"truth": truth, "L": L, "auto": auto, "lab_auto": lab_of(auto), "h_same": ab_histogram(same),
                      **{name: before_palette(colorizer, gray, ref) for name, ref in refs.items()}})
        print(f"{len(cases)} {os.path.relpath(path, args.data)}", flush=True)
    if args.cache and not os.path.exists(args.cache):
        with open(args.cache, "wb") as f:
            pickle.dump(cases, f)

    js_auto = np.mean([js_divergence(ab_histogram(c["auto"]), c["h_same"]) for c in cases])
    auto_m = [image_metrics(c["auto"], c["truth"]) for c in cases]
    print(f"\n{args.weights} ({kind}), {len(cases)} pairs of {args.data}: automatic JS {js_auto:.3f}, "
          f"PSNR {np.mean([m['psnr'] for m in auto_m]):.2f}, CIEDE2000 {np.mean([m['ciede2000'] for m in auto_m]):.2f}, "
          f"false colour {np.nanmean([m['false_colour'] for m in auto_m]):.1f}")
    print(f"{'start':>6s}{'full':>6s}{'spread':>7s}{'chroma':>8s}{'hints':>6s} | {'JS same':>8s}{'change':>8s}{'strength':>9s}"
          f"{'colourf':>8s} | {'unrel dE':>9s}{'max':>6s} | {'aug PSNR':>9s}{'dE':>6s}{'fc':>6s}")
    saved = reference.MAX_SPREAD, reference.PALETTE_CHROMA
    try:
        for start, width, spread, chroma, gate in itertools.product(starts, widths, spreads, chromas, gates):
            reference.MAX_SPREAD, reference.PALETTE_CHROMA = spread, chroma

            def laid(case, name, start=start, width=width, gate=gate):
                ab, guide = case[name]
                strength = float(np.clip((guide.similarity - start) / width, 0, 1))
                if gate > 0:
                    strength = max(strength, min(1.0, len(guide.hints) / gate))
                return to_rgb(case["L"], reference.apply_palette(ab, guide._replace(strength=strength))), strength
            same = [laid(c, "same-kind") for c in cases]
            js = np.mean([js_divergence(ab_histogram(out), c["h_same"]) for (out, _), c in zip(same, cases)])
            unrel = [ciede2000_lab(lab_of(laid(c, "unrelated")[0]), c["lab_auto"]) for c in cases]
            aug = [image_metrics(laid(c, "truth-aug")[0], c["truth"]) for c in cases]
            colourf = np.mean([colorfulness(out) for out, _ in same])
            print(f"{start:6.2f}{start + width:6.2f}{spread:7.1f}{chroma[0]:4.0f}:{chroma[1]:<3.0f}{gate:6.0f} | {js:8.3f}"
                  f"{100 * (js / js_auto - 1):+7.1f}%{np.mean([s for _, s in same]):9.2f}{colourf:8.1f} | "
                  f"{np.mean(unrel):9.2f}{np.max(unrel):6.2f} | {np.mean([m['psnr'] for m in aug]):9.2f}"
                  f"{np.mean([m['ciede2000'] for m in aug]):6.2f}{np.nanmean([m['false_colour'] for m in aug]):6.1f}",
                  flush=True)
    finally:
        reference.MAX_SPREAD, reference.PALETTE_CHROMA = saved


if __name__ == "__main__":
    main()
