"""Measure reference-guided colorization (reference.py) against the automatic result.

    python tools/reference_pairs.py --weights weights/colorizer.pt --data /work/shared/datasets/photos/val --n 40
    python tools/reference_pairs.py --time 1024     # the matching alone, a 1024 px photo and reference

Each photo is cut to a 256 px centre square (as --eval --eval-size 256), grayed and colorized
  automatic    without hints;
  truth-aug    with the hints of its own truth cropped, flipped and rescaled (reference.augmented_truth,
               a seed fixed by the file name): the oracle test of exemplar papers;
  same-source  with the hints of the next chosen photo of the same folder (two dogs, two faces);
  unrelated    with the hints of a photo from another folder.
It prints means of PSNR, CIEDE2000 and false colour against the truth, the hints given, the
CIEDE2000 of the unrelated-reference result to the automatic one, and the Jensen-Shannon divergence
of the output's ab histogram to the same-source reference's (lower: colours moved toward it).
"""
import argparse
import glob
import os
import sys
import time
import zlib

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from colorizer import Colorizer  # noqa: E402
from evaluate import center_square, nanmean  # noqa: E402
from images import gray_version, is_grayscale, load_image, rgb_to_lab  # noqa: E402
from metrics import ciede2000_lab, image_metrics  # noqa: E402
from reference import augmented_truth, photo_L, reference_hints  # noqa: E402

AB_BINS = 16  # histogram bins per ab axis, over [-110, 110]


def ab_histogram(rgb):
    """The normalised 2-D histogram of an (H, W, 3) image's Lab ab."""
    lab = rgb_to_lab(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0]
    hist, _, _ = np.histogram2d(lab[1].ravel(), lab[2].ravel(), AB_BINS, [[-110, 110], [-110, 110]])
    return hist / hist.sum()


def js_divergence(p, q):
    """Jensen-Shannon divergence of two histograms, in bits (0 same, 1 disjoint)."""
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())
    return (kl(p, m) + kl(q, m)) / 2


def choose_photos(data, n, size):
    """n colour photos spread over the folders of data (every k-th in sorted order), as 256 px squares:
    [(path, folder, truth)]."""
    files = sorted(glob.glob(os.path.join(data, "**", "*.*"), recursive=True))
    files = [f for f in files if os.path.splitext(f)[1].lower() in (".jpg", ".jpeg", ".png")]
    chosen = []
    for f in files[::max(1, len(files) // n)]:
        truth = center_square(load_image(f)[0], size)
        if not is_grayscale(truth):
            chosen.append((f, os.path.dirname(f), truth))
    return chosen[:n]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="weights/colorizer.pt")
    parser.add_argument("--data", default="/work/shared/datasets/photos/val")
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="centre square and render size, pixels")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time", type=int, default=0, metavar="PX",
                        help="only time the matching of a PX px photo and a PX px reference (at render --size)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    colorizer = Colorizer.load(args.weights, device="cpu", render_size=args.size)
    netG = colorizer.network.netG
    if args.time:
        return time_matching(netG, args.data, args.time, args.size, args.threads)
    photos = choose_photos(args.data, args.n, args.size)
    rows, match_s = [], []
    for i, (path, folder, truth) in enumerate(photos):
        gray = gray_version(truth)
        L = photo_L(gray, args.size)
        same = next((t for p, d, t in photos[i + 1:] + photos[:i] if d == folder), None)
        other = next(t for p, d, t in photos[i + 1:] + photos[:i] if d != folder)
        rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode()))
        refs = {"truth-aug": augmented_truth(truth, rng), "same-source": same, "unrelated": other}
        outs = {"automatic": np.asarray(colorizer.colorize(gray), np.float32) / 255}
        row = {"automatic_hints": 0}
        for name, ref in refs.items():
            if ref is None:
                continue
            t0 = time.perf_counter()
            hints = reference_hints(netG, L, ref, photo_size=gray.shape[1::-1])
            match_s.append(time.perf_counter() - t0)
            outs[name] = np.asarray(colorizer.colorize(gray, hints=hints), np.float32) / 255
            row[name + "_hints"] = len(hints)
        for name, out in outs.items():
            row.update({f"{name}_{k}": v for k, v in image_metrics(out, truth).items()})
        lab_auto = rgb_to_lab(outs["automatic"].transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        lab_unrel = rgb_to_lab(outs["unrelated"].transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)
        row["unrelated_vs_automatic_ciede2000"] = ciede2000_lab(lab_unrel, lab_auto)
        if same is not None:
            h_ref = ab_histogram(same)
            row["js_automatic"] = js_divergence(ab_histogram(outs["automatic"]), h_ref)
            row["js_same-source"] = js_divergence(ab_histogram(outs["same-source"]), h_ref)
        rows.append(row)
        print(f"{i + 1}/{len(photos)} {os.path.relpath(path, args.data)}: hints {row.get('truth-aug_hints')}, "
              f"PSNR {row['automatic_psnr']:.2f} -> {row['truth-aug_psnr']:.2f}", flush=True)

    def mean(key, fmt=".2f"):
        value = nanmean([r[key] for r in rows if key in r])
        return "-" if value is None else format(value, fmt)
    print(f"\n{args.weights}, {len(rows)} photos of {args.data}, {args.size} px")
    print(f"{'':14s}{'PSNR':>8s}{'CIEDE2000':>11s}{'false col %':>12s}{'hints':>7s}")
    for name in ("automatic", "truth-aug", "same-source", "unrelated"):
        print(f"{name:14s}{mean(name + '_psnr'):>8s}{mean(name + '_ciede2000'):>11s}"
              f"{mean(name + '_false_colour'):>12s}{mean(name + '_hints', '.1f'):>7s}")
    print(f"unrelated reference: CIEDE2000 to the automatic result {mean('unrelated_vs_automatic_ciede2000')}")
    print(f"same-source reference: JS divergence of ab histograms to the reference's, automatic "
          f"{mean('js_automatic', '.3f')}, with the reference {mean('js_same-source', '.3f')}")
    print(f"matching: {1000 * np.mean(match_s):.0f} ms a reference on average ({args.threads} thread)")


def time_matching(netG, data, side, render_size, threads, repeats=5):
    """Print the time reference_hints takes for a side x side photo (its L at render size included) and
    a side x side reference: a photo of data enlarged to that size, and its mirror image."""
    from PIL import Image
    _, _, truth = choose_photos(data, 1, 256)[0]
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
