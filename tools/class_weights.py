"""Print what CLASS_REBALANCE makes of the training photos' colours: the weight ClassLoss gives a gray
pixel, the pixels within chroma 10 and the rarest colours, against the average pixel's 1.

    D=../shared/datasets
    python tools/class_weights.py --train-data $D/photos/train,$D/bsds500/train,$D/bsds500/val --rebalance 0.5
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
import models  # noqa: E402
from losses import ClassLoss  # noqa: E402
from neutral_readout import NEUTRAL_CHROMA, training_prior  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-data", required=True, help="the training run's --data (comma-separated folders)")
    p.add_argument("--rebalance", type=float, required=True, help="CLASS_REBALANCE")
    p.add_argument("--images", type=int, default=400, help="training crops drawn for the colour distribution")
    a = p.parse_args()
    bins = models.ab_bins()
    loss = ClassLoss(bins, a.rebalance)
    loss.prior.copy_(training_prior(bins, a.train_data.split(","), a.images))
    w, prior = loss.weights(), loss.prior
    chroma = (bins * models.AB_SCALE).norm(dim=1)
    near = chroma <= NEUTRAL_CHROMA
    print(f"gray pixel: {float(w[chroma.argmin()]):.2f}; pixels within chroma {NEUTRAL_CHROMA:g} "
          f"({float(prior[near].sum()):.0%} of them): {float((w * prior)[near].sum() / prior[near].sum()):.2f}; "
          f"rarest colours: {float(w.max()):.2f}")


if __name__ == "__main__":
    sys.exit(main())
