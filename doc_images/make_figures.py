"""The README's figures, from the models themselves.

    python doc_images/make_figures.py oldphotos --before weights/colorizer_bsds500.pt --after weights/colorizer.pt
    python doc_images/make_figures.py hints PHOTO HINTS.json --weights HINT_MODEL.pt --out doc_images/hints.jpg
    (the README's two: ../shared/datasets/photos/val/clothing_cc0/images_32c91193-3fe7-48a1-8867-01c55e4f3985.jpg
    with doc_images/hints_example.json, and ../shared/datasets/oldphotos/bopb_test_images_old_w_scratch_c.jpg with
    doc_images/hints_oldphoto.json --out doc_images/hints_oldphoto.jpg; --weights weights/colorizer.pt)
"""
import argparse
import os
import sys

from PIL import Image, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from colorizer import Colorizer  # noqa: E402
from images import find_images  # noqa: E402
from hints import read_hints  # noqa: E402
from webapp import with_markers  # noqa: E402


def row_of(images, titles, height):
    """Images side by side at one height, each with a title above; white gaps."""
    images = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.LANCZOS) for im in images]
    gap, header = 6, 18
    row = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), height + header), "white")
    x = 0
    for im, title in zip(images, titles):
        row.paste(im, (x, header))
        ImageDraw.Draw(row).text((x + 4, 3), title, fill="black")
        x += im.width + gap
    return row


def stack(rows):
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height + 6
    return sheet


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="figure", required=True)
    old = sub.add_parser("oldphotos", help="input | previous model | new model, for historical photos")
    old.add_argument("--photos", default=os.path.join(HERE, "..", "..", "shared", "datasets", "oldphotos"))
    old.add_argument("--names", default="", help="comma-separated file names (default: every 3rd photo)")
    old.add_argument("--before", required=True)
    old.add_argument("--after", required=True)
    old.add_argument("--before-saturation", type=float, default=1.0,
                     help="SATURATION for --before (1.0: as the previous bundled model shipped)")
    old.add_argument("--out", default=os.path.join(HERE, "oldphotos_before_after.jpg"))
    hint = sub.add_parser("hints", help="gray | automatic | with hints, the network alone and spread, for one photo")
    hint.add_argument("photo")
    hint.add_argument("hints")
    hint.add_argument("--weights", required=True)
    hint.add_argument("--out", default=os.path.join(HERE, "hints_example.jpg"))
    args = p.parse_args()

    if args.figure == "oldphotos":
        files = find_images([args.photos])
        if args.names:
            files = [f for f in files if os.path.basename(f) in args.names.split(",")]
        else:
            files = files[::3]
        models = [Colorizer.load(args.before, saturation=args.before_saturation), Colorizer.load(args.after)]
        rows = [row_of([Image.open(f)] + [m.colorize(f) for m in models],
                       ["input", f"before: {os.path.basename(args.before)}", f"after: {os.path.basename(args.after)}"],
                       260) for f in files]
        figure = stack(rows)
    else:
        model, hints = Colorizer.load(args.weights), read_hints(args.hints)
        gray = model.colorize(args.photo, saturation=0.0)
        hinted = model.colorize(args.photo, hints=hints)
        model.hint_spread = 0
        alone = model.colorize(args.photo, hints=hints)
        figure = row_of([gray, model.colorize(args.photo), with_markers(alone, hints), with_markers(hinted, hints)],
                        ["gray", "automatic", f"{len(hints)} hints, the network alone", f"{len(hints)} hints (the dots)"],
                        360)
    figure.save(args.out, quality=88)
    print(f"wrote {args.out} ({figure.width}x{figure.height})")


if __name__ == "__main__":
    main()
