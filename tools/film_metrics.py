"""Consistency in time of colorized films, with no truth: flicker, CDC and colourfulness of each MP4
(video.flicker, video.cdc, metrics.colorfulness, means over all frames), and optionally a strip of
frames (input on top, each film below).

    python colorize_base.py --infer ../shared/datasets/video/abomb_1952.mp4 --out /tmp/filtered
    python colorize_base.py --infer ../shared/datasets/video/abomb_1952.mp4 --temporal 0 --out /tmp/alone
    python tools/film_metrics.py /tmp/filtered/abomb_1952.mp4 /tmp/alone/abomb_1952.mp4 \\
        --input ../shared/datasets/video/abomb_1952.mp4 --json results/film_abomb_v3.json \\
        --strip doc_images/film_abomb_strip.jpg --frames 20,43,44,100,133,134,250,298,299,340
"""
import argparse
import json
import os
import sys

import av
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import video  # noqa: E402
from images import rgb_to_lab  # noqa: E402
from metrics import colorfulness  # noqa: E402


def frames(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def film_metrics(path):
    rgb = [f.astype(np.float32) / 255 for f in frames(path)]
    lab = [rgb_to_lab(x.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0) for x in rgb]
    with av.open(path) as c:
        duration, rate = float(c.duration / 1e6), str(c.streams.video[0].average_rate)
    return {"frames": len(rgb), "rate": rate, "duration_s": duration, "flicker": video.flicker(lab),
            "cdc": video.cdc(rgb), "colourfulness": float(np.mean([colorfulness(x) for x in rgb]))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("films", nargs="+", help="colorized MP4s")
    p.add_argument("--input", help="the gray input film: scored too, and the top row of the strip")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--strip", help="write a strip of frames here (needs --input)")
    p.add_argument("--frames", default="0", help="comma-separated frame numbers for the strip")
    p.add_argument("--height", type=int, default=160, help="strip row height, px")
    args = p.parse_args()
    results = {path: film_metrics(path) for path in args.films + ([args.input] if args.input else [])}
    for path, r in results.items():
        print(f"{path}: {r['frames']} frames, {r['rate']} fps, {r['duration_s']:.2f} s; flicker {r['flicker']:.3f}, "
              f"CDC {r['cdc']:.5f}, colourfulness {r['colourfulness']:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.strip and args.input:
        picks = [int(v) for v in args.frames.split(",")]
        rows = [frames(args.input)] + [frames(path) for path in args.films[:1]]
        h = args.height
        w = round(rows[0][0].shape[1] * h / rows[0][0].shape[0])
        sheet = Image.new("RGB", (w * len(picks), h * len(rows)), "white")
        for r, row in enumerate(rows):
            for k, i in enumerate(picks):
                sheet.paste(Image.fromarray(row[i]).resize((w, h), Image.LANCZOS), (k * w, r * h))
        sheet.save(args.strip, quality=85)


if __name__ == "__main__":
    main()
