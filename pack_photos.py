"""Pack a training set small enough to send to a rented GPU machine: at most CAP photos per source
folder (drawn with a fixed seed), shorter side at most --side px, re-encoded as WebP.

    python pack_photos.py OUT --photos ../shared/datasets/photos --bsds ../shared/datasets/bsds500
    tar czf data.tgz OUT        # what the bundled model's GPU phase trained on: 8,984 photos, 36 MiB

OUT gets photos/<source>/, bsds_train/, bsds_val/ (train with --data OUT/photos,OUT/bsds_train,OUT/bsds_val
and --source-balance 1, so every source is drawn equally often whatever its cap) and val/ (16
photos of photos/val for the sample grids).
"""
import argparse
import os
import random
from multiprocessing import Pool

from PIL import Image

from images import find_images

CAPS = {"imagenette": 1200, "utkface_crop_part1": 1200, "humanfaces160": 1000, "clothing_cc0": 800, "catsdogs": 800}


def convert(job):
    src, folder, side, quality = job
    im = Image.open(src).convert("RGB")
    r = min(1.0, side / min(im.size))
    if r < 1:
        im = im.resize((round(im.width * r), round(im.height * r)), Image.LANCZOS)
    out = os.path.join(folder, os.path.splitext(os.path.basename(src))[0] + ".webp")
    im.save(out, "WEBP", quality=quality, method=4)
    return os.path.getsize(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--photos", default="../shared/datasets/photos")
    p.add_argument("--bsds", default="../shared/datasets/bsds500")
    p.add_argument("--side", type=int, default=160, help="shorter side at most, px")
    p.add_argument("--quality", type=int, default=75, help="WebP quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap-scale", type=float, default=1.0, help="multiply every source's cap by this (a smaller pack)")
    args = p.parse_args()

    rng, jobs = random.Random(args.seed), []
    train = os.path.join(args.photos, "train")
    for source in sorted(os.listdir(train)):
        files = find_images([os.path.join(train, source)])
        rng.shuffle(files)
        cap = round(CAPS.get(source, len(files)) * args.cap_scale)
        jobs += [(f, os.path.join(args.out, "photos", source)) for f in files[:cap]]
    for split in ("train", "val"):
        jobs += [(f, os.path.join(args.out, f"bsds_{split}")) for f in find_images([os.path.join(args.bsds, split)])]
    val = find_images([os.path.join(args.photos, "val")])
    rng.shuffle(val)
    jobs += [(f, os.path.join(args.out, "val")) for f in val[:16]]
    for folder in {folder for _, folder in jobs}:
        os.makedirs(folder, exist_ok=True)
    with Pool() as pool:
        sizes = pool.map(convert, [(f, folder, args.side, args.quality) for f, folder in jobs], chunksize=64)
    print(f"{len(jobs)} photos, {sum(sizes) / 2**20:.1f} MiB in {args.out}")


if __name__ == "__main__":
    main()
