"""The colour cast a model lays on things that are white, gray or black in truth: the mean Lab a*, b*
and chroma of its output over the pixels whose true chroma is under metrics.NEUTRAL_CHROMA, split
into light (L* >= 50, what --eval's false colour counts) and dark ones. A cast that is not zero on
average (b* > 0: yellow, < 0: blue) is a bias of the model, not a guess about one photo.

    python tools/neutral_cast.py --weights weights/colorizer.pt ../shared/datasets/bsds500/test ../shared/datasets/photos/val
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from colorizer import Colorizer  # noqa: E402
from images import find_images, gray_version, load_image  # noqa: E402
from metrics import NEUTRAL_CHROMA, _lab_pair  # noqa: E402

MIN_PIXELS = 100  # a photo counts for a part (light or dark) only with at least this many neutral pixels there


def neutral_cast(colorizer, folder, limit):
    """{part: {photos, a, b, chroma}}: per-photo means over its neutral pixels, averaged over photos."""
    per = {"light": [], "dark": []}
    for path in find_images([folder])[:limit]:
        truth = load_image(path)[0]
        ours = np.asarray(colorizer.colorize(gray_version(truth)).convert("RGB"), np.float32) / 255
        p, t = _lab_pair(ours, truth)  # (H, W, 3) each, the Lab that --eval's false colour reads
        neutral = np.hypot(t[..., 1], t[..., 2]) < NEUTRAL_CHROMA
        for part, mask in (("light", neutral & (t[..., 0] >= 50)), ("dark", neutral & (t[..., 0] < 50))):
            if mask.sum() >= MIN_PIXELS:
                a, b = p[..., 1][mask], p[..., 2][mask]
                per[part].append((a.mean(), b.mean(), np.hypot(a, b).mean()))
    return {part: dict(photos=len(v), **dict(zip(("a", "b", "chroma"), np.mean(v, 0).round(2).tolist())))
            for part, v in per.items() if v}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="folders of colour photos (the truth)")
    ap.add_argument("--weights", default="weights/colorizer.pt")
    ap.add_argument("--limit", type=int, default=200, help="at most this many photos of each folder, the first in path order")
    ap.add_argument("--out", default="", help="also write the figures to this JSON file")
    a = ap.parse_args()
    colorizer = Colorizer.load(a.weights, device="cpu")
    result = {"weights": a.weights}
    for folder in a.folders:
        result[folder] = neutral_cast(colorizer, folder, a.limit)
        for part, r in result[folder].items():
            print(f"{folder} {part} neutral pixels ({r['photos']} photos): a* {r['a']:+.2f}  b* {r['b']:+.2f}  "
                  f"chroma {r['chroma']:.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
