"""How well a whole-photo similarity tells a same-kind reference from an unrelated one
(tools/reference_pairs.py's pairing), as the AUC: the share of (same-kind, unrelated) pairs of pairs
in which the same-kind reference is the more similar.

    python tools/reference_kinds.py --data /work/shared/datasets/photos/train --n 60

It compares reference.py's whole_features (the mean of the coarsest encoder level) with the mean of
the cell features (encoder_features) that reference_guide used before it.
"""
import argparse
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import reference  # noqa: E402
from checkpoint import load_generator  # noqa: E402
from images import gray_version  # noqa: E402
from reference_pairs import choose_pairs  # noqa: E402


@torch.inference_mode()
def similarities(netG, a, b):
    """{measure: cosine similarity} of two colour photos' luminances."""
    La, Lb = (torch.as_tensor(reference.photo_L(gray_version(x), 256)) for x in (a, b))
    levels_a, levels_b = (reference.encoder_levels(netG, L, 4 * reference.MATCH_STRIDE) for L in (La, Lb))
    cells_a, cells_b = (reference.encoder_features(netG, L, levels=lv) for L, lv in ((La, levels_a), (Lb, levels_b)))
    return {"whole_features": float(F.cosine_similarity(reference.whole_features(levels_a, La),
                                                        reference.whole_features(levels_b, Lb), 0)),
            "mean of encoder_features": float(F.cosine_similarity(cells_a.mean(0), cells_b.mean(0), 0))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="weights/colorizer.pt")
    parser.add_argument("--data", default="/work/shared/datasets/photos/train")
    parser.add_argument("--n", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    netG = load_generator(args.weights, "cpu")[0]
    same, unrelated = [], []
    for _, truth, like, other in choose_pairs(args.data, args.n, 256):
        same.append(similarities(netG, truth, like))
        unrelated.append(similarities(netG, truth, other))
    print(f"{args.weights}, {len(same)} pairs of {args.data}")
    for key in same[0]:
        s, u = np.array([d[key] for d in same]), np.array([d[key] for d in unrelated])
        print(f"{key:26s} AUC {(s[:, None] > u[None]).mean():.3f}   same kind {s.mean():.3f} +- {s.std():.3f}   "
              f"unrelated {u.mean():.3f} +- {u.std():.3f}")


if __name__ == "__main__":
    main()
