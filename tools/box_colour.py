"""Mean Lab colour of a box of a photo colorized by a model: how the docs measure the polar bear of
examples/bsds_100007_gray.jpg (the box x 130..215, y 145..180; the truth is about a* -5, above +8 looks
pink).

    python tools/box_colour.py --weights runs/x/checkpoint.pt [--photo P --box 130,215,145,180] [--saturation 1]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from colorizer import Colorizer  # noqa: E402
from images import rgb_to_lab  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="weights/colorizer.pt")
    p.add_argument("--photo", default="examples/bsds_100007_gray.jpg")
    p.add_argument("--box", default="130,215,145,180", help="x0,x1,y0,y1 in the photo's pixels")
    p.add_argument("--saturation", type=float, default=None)
    a = p.parse_args()
    x0, x1, y0, y1 = (int(v) for v in a.box.split(","))
    out = Colorizer.load(a.weights, device="cpu").colorize(a.photo, saturation=a.saturation)
    rgb = np.asarray(out.convert("RGB"), np.float32)[y0:y1, x0:x1] / 255  # (h, w, 3)
    lab = rgb_to_lab(rgb.transpose(2, 0, 1)[None])                        # (1, 3, h, w)
    L, A, B = (float(lab[0, i].mean()) for i in range(3))
    print(f"{a.photo} box x {x0}..{x1}, y {y0}..{y1}: L* {L:.1f}  a* {A:+.1f}  b* {B:+.1f}")


if __name__ == "__main__":
    main()
