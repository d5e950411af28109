"""Measure reference-guided colorization (reference.py) against the automatic result.

    python tools/reference_pairs.py --weights weights/colorizer.pt --data /work/shared/datasets/photos/val --n 40
    python tools/reference_pairs.py --n 60 --figure doc_images/reference_same_kind.jpg
    python tools/reference_pairs.py --time 1024     # the matching alone, a 1024 px photo and reference

Each photo is cut to a 256 px centre square (as --eval --eval-size 256), grayed and colorized
  automatic    without a reference;
  truth-aug    with its own truth cropped, flipped and rescaled as the reference (reference.augmented_truth,
               a seed fixed by the file name): the oracle test of exemplar papers;
  same-kind    with the next colour photo of the same kind as the reference (kind_of: two tenches of
               imagenette, two dogs of catsdogs, two faces of a faces folder);
  unrelated    with the next photo of another kind from another folder as the reference,
each through Colorizer.colorize(reference=): matched hints, then the palette. It prints means of PSNR,
CIEDE2000 and false colour against the truth, the hints and palette strength given, the CIEDE2000 of
the unrelated-reference result to the automatic one, and the Jensen-Shannon divergence of the
output's ab histogram to the same-kind reference's (lower: colours moved toward it), in this tool's
16x16 bins and in --eval's ab_divergence.
"""
import argparse
import glob
import json
import os
import re
import sys
import time
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from colorizer import Colorizer  # noqa: E402
from evaluate import ab_divergence, center_square, nanmean  # noqa: E402
from images import gray_version, is_grayscale, load_image, rgb_to_lab  # noqa: E402
from metrics import ciede2000_lab, image_metrics  # noqa: E402
from reference import augmented_truth, photo_L, reference_guide, reference_hints  # noqa: E402
from video import js_divergence as js_nats  # noqa: E402

AB_BINS = 16  # histogram bins per ab axis, over [-110, 110]


def ab_histogram(rgb):
    """The normalised 2-D histogram of an (H, W, 3) image's Lab ab."""
    lab = rgb_to_lab(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0]
    hist, _, _ = np.histogram2d(lab[1].ravel(), lab[2].ravel(), AB_BINS, [[-110, 110], [-110, 110]])
    return hist / hist.sum()


def js_divergence(p, q):
    """Jensen-Shannon divergence of two histograms, in bits (0 same, 1 disjoint): video.js_divergence's, in bits."""
    return js_nats(p, q) / np.log(2)


def kind_of(path):
    """What a photo of photos/ shows, for pairing: its folder and, where its name says, its ImageNet
    synset (n01440764: tench) or cat / dog; None for a catsdogs photo whose name does not say."""
    folder, name = os.path.basename(os.path.dirname(path)), os.path.basename(path)
    label = re.search(r"n\d{8}", name) or re.search(r"(cat|dog)\.", name)
    if label:
        return f"{folder}/{label.group(label.lastindex or 0)}"
    return None if folder == "catsdogs" else folder


def colour_photos(data, most=800, size=256):
    """Up to most of the photos under data (every k-th in sorted order) whose size px centre square has
    colour (mean Lab chroma over 4): {path: square}."""
    files = sorted(f for f in glob.glob(os.path.join(data, "**", "*.*"), recursive=True)
                   if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png"))
    squares = {}
    for f in files[::max(1, len(files) // most)]:
        truth = center_square(load_image(f)[0], size)
        lab = rgb_to_lab(np.ascontiguousarray(truth.transpose(2, 0, 1))[None])[0]
        if not is_grayscale(truth) and np.hypot(lab[1], lab[2]).mean() > 4:
            squares[f] = truth
    return squares


def choose_pairs(data, n, size):
    """n photos of data with a photo of the same kind (kind_of) and one of another kind from another
    folder, the next such in sorted order: [(path, truth, same-kind photo, unrelated photo)]."""
    squares = colour_photos(data, size=size)
    files = list(squares)
    kinds = {f: kind_of(f) for f in files}
    pairable = [f for f in files if kinds[f] and sum(kinds[g] == kinds[f] for g in files) > 1]
    chosen = []
    for f in pairable[::max(1, len(pairable) // n)][:n]:
        rest = files[files.index(f) + 1:] + files[:files.index(f)]
        same = next(g for g in rest if kinds[g] == kinds[f])
        other = next(g for g in rest if kinds[g] != kinds[f] and os.path.dirname(g) != os.path.dirname(f))
        chosen.append((f, squares[f], squares[same], squares[other]))
    return chosen


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="weights/colorizer.pt")
    parser.add_argument("--data", default="/work/shared/datasets/photos/val")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="centre square and render size, pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--saturation", type=float, default=None, help="the colour gain (default SATURATION)")
    parser.add_argument("--json", help="write the means here")
    parser.add_argument("--figure", help="write a sheet here: gray | automatic | same-kind reference | with it, "
                        "for --figure-rows of the photos, evenly spaced")
    parser.add_argument("--figure-rows", type=int, default=6)
    parser.add_argument("--time", type=int, default=0, metavar="PX",
                        help="only time the matching of a PX px photo and a PX px reference (at render --size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    colorizer = Colorizer.load(args.weights, device="cpu", render_size=args.size,
                               **({} if args.saturation is None else {"saturation": args.saturation}))
    netG = colorizer.network.netG
    if args.time:
        return time_matching(netG, args.data, args.time, args.size, args.threads)
    pairs = choose_pairs(args.data, args.n, args.size)
    rows, match_s, sheet = [], [], []
    for i, (path, truth, same, other) in enumerate(pairs):
        gray = gray_version(truth)
        rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode()))
        refs = {"truth-aug": augmented_truth(truth, rng), "same-kind": same, "unrelated": other}
        outs = {"automatic": np.asarray(colorizer.colorize(gray), np.float32) / 255}
        row = {"automatic_hints": 0}
        for name, ref in refs.items():
            t0 = time.perf_counter()
            guide = reference_guide(netG, photo_L(gray, args.size), ref, photo_size=gray.shape[1::-1])
            match_s.append(time.perf_counter() - t0)
            outs[name] = np.asarray(colorizer.colorize(gray, reference=ref), np.float32) / 255
            row.update({name + "_hints": len(guide.hints), name + "_palette": guide.strength})
        for name, out in outs.items():
            row.update({f"{name}_{k}": v for k, v in image_metrics(out, truth).items()})
        lab_auto = rgb_to_lab(outs["automatic"].transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        lab_unrel = rgb_to_lab(outs["unrelated"].transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        row["unrelated_vs_automatic_ciede2000"] = ciede2000_lab(lab_unrel, lab_auto)
        h_ref = ab_histogram(same)
        row["js_automatic"] = js_divergence(ab_histogram(outs["automatic"]), h_ref)
        row["js_same-kind"] = js_divergence(ab_histogram(outs["same-kind"]), h_ref)
        row["ab_divergence_automatic"] = ab_divergence(outs["automatic"], same)
        row["ab_divergence_same-kind"] = ab_divergence(outs["same-kind"], same)
        row["path"] = os.path.relpath(path, args.data)
        rows.append(row)
        sheet.append((gray, outs["automatic"], same, outs["same-kind"]))
        print(f"{i + 1}/{len(pairs)} {os.path.relpath(path, args.data)}: hints {row['truth-aug_hints']} / "
              f"{row['same-kind_hints']} / {row['unrelated_hints']}, palette {row['truth-aug_palette']:.2f} / "
              f"{row['same-kind_palette']:.2f} / {row['unrelated_palette']:.2f}", flush=True)

    def mean(key, fmt=".2f"):
        value = nanmean([r[key] for r in rows if key in r])
        return "-" if value is None else format(value, fmt)
    print(f"\n{args.weights}, {len(rows)} photos of {args.data}, {args.size} px")
    print(f"{'':14s}{'PSNR':>8s}{'CIEDE2000':>11s}{'false col %':>12s}{'hints':>7s}{'palette':>9s}")
    for name in ("automatic", "truth-aug", "same-kind", "unrelated"):
        print(f"{name:14s}{mean(name + '_psnr'):>8s}{mean(name + '_ciede2000'):>11s}"
              f"{mean(name + '_false_colour'):>12s}{mean(name + '_hints', '.1f'):>7s}{mean(name + '_palette'):>9s}")
    print(f"unrelated reference: CIEDE2000 to the automatic result {mean('unrelated_vs_automatic_ciede2000')}")
    far = [r for r in rows if r["unrelated_vs_automatic_ciede2000"] >= 2]
    print(f"unrelated references that move the result by CIEDE2000 2 or more: {len(far)} of {len(rows)}"
          + "".join(f"\n  {r['path']}: {r['unrelated_vs_automatic_ciede2000']:.2f} ({r['unrelated_hints']} hints)" for r in far))
    print(f"same-kind reference: JS divergence of ab histograms to the reference's (16x16 bins, bits), automatic "
          f"{mean('js_automatic', '.3f')}, with the reference {mean('js_same-kind', '.3f')}; --eval's ab_divergence "
          f"(32x32 bins of visible colour, nats) {mean('ab_divergence_automatic', '.3f')} -> "
          f"{mean('ab_divergence_same-kind', '.3f')}")
    print(f"matching: {1000 * np.mean(match_s):.0f} ms a reference on average ({args.threads} thread)")
    if args.figure:
        from PIL import Image
        chosen = sheet[::max(1, len(sheet) // args.figure_rows)][:args.figure_rows]
        grid = np.concatenate([np.concatenate(row, axis=1) for row in chosen], axis=0)
        Image.fromarray(np.round(np.clip(grid, 0, 1) * 255).astype(np.uint8)).save(args.figure, quality=88)
    if args.json:
        keys = sorted({k for r in rows for k in r} - {"path"})
        with open(args.json, "w") as f:
            json.dump({"weights": args.weights, "data": args.data, "photos": len(rows),
                       "means": {k: nanmean([r[k] for r in rows if k in r]) for k in keys}}, f, indent=1)


def time_matching(netG, data, side, render_size, threads, repeats=5):
    """Print the time reference_hints takes for a side x side photo (its L at render size included) and
    a side x side reference: a photo of data enlarged to that size, and its mirror image."""
    from PIL import Image
    truth = next(iter(colour_photos(data, most=1).values()))
    a = np.asarray(Image.fromarray(np.round(truth * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC),
                   np.float32) / 255
    gray, b = gray_version(a), a[:, ::-1].copy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        hints = reference_hints(netG, photo_L(gray, render_size), b, photo_size=(side, side))
        times.append(time.perf_counter() - t0)
    print(f"matching a {side} px photo and a {side} px reference at render {render_size} on {threads} thread(s): "
          f"median {1000 * np.median(times):.0f} ms of {repeats} ({len(hints)} hints)")


if __name__ == "__main__":
    main()
