"""Score an AB_CLASSES model read with a neutral-aware rule instead of the annealed mean: a test of
whether a rebalanced model's class distribution knows where a thing is white.

A model trained with CLASS_REBALANCE < 1 learns a distribution tilted towards rare colours by the
loss's weights w. Dividing them out (p / w, renormalised) gives the model's estimate of the chance
P_n that the truth is neutral (the 5 cells within chroma 10 that a gray truth is encoded on). The
rule reads neutral with that chance and the vivid colour otherwise:
ab = P_n * (annealed mean of the neutral cells) + (1 - P_n) * (annealed mean of the others).
w comes from the training photos' colours (the distribution ClassLoss keeps while training, which a
model file does not hold), drawn as training draws them: the same folders, SOURCE_BALANCE, crops.

    D=../shared/datasets
    python tools/neutral_readout.py --weights runs/x/checkpoint.pt --eval $D/bsds500/test --out runs/readout_bsds \\
        --train-data $D/photos/train,$D/bsds500/train,$D/bsds500/val --rebalance 0.5
"""
import argparse
import os
import sys
import types

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
from colorizer import Colorizer  # noqa: E402
from data import ColorizationDataset, scan_images, source_weights, to_net_input  # noqa: E402
from evaluate import evaluate  # noqa: E402
from losses import ClassLoss  # noqa: E402

NEUTRAL_CHROMA = 10.0  # Lab units: the cell of a gray truth and its four neighbours


def training_prior(bins, folders, n_images, size=128, balance=1.0, seed=0):
    """Share of the training pixels (ab pooled 4x4, as ClassLoss pools it) nearest each bin, (Q,)."""
    files, _, _ = scan_images(folders, 100_000_000, log=lambda *a: None)
    weights = torch.tensor(source_weights(files, folders, balance, log=lambda *a: None), dtype=torch.float64)
    dataset = ColorizationDataset(files, size, train=True)
    g = torch.Generator().manual_seed(seed)
    counts = torch.zeros(len(bins))
    for i in torch.multinomial(weights, n_images, replacement=True, generator=g).tolist():
        _, ab = to_net_input(dataset[i][None], "cpu")
        idx = models.bin_distances(F.avg_pool2d(ab, 4), bins).argmin(1)
        counts += torch.bincount(idx.flatten(), minlength=len(bins)).float()
    return counts / counts.sum()


def neutral_decode(classes, w):
    """A decode for classes (an ABClassifier) that reads neutral with the model's unweighted chance of it."""
    neutral = ((classes.bins * models.AB_SCALE).norm(dim=1) <= NEUTRAL_CHROMA)[None, :, None, None]

    def annealed_mean(logits, cells, T):  # ABClassifier.decode over cells alone
        q = torch.softmax(torch.where(cells, logits / T, -torch.inf), dim=1)
        return F.conv2d(q, classes.bins.T[:, :, None, None])

    def decode(self, logits):
        logits = logits.float()
        u = torch.softmax(logits, dim=1) / w[None, :, None, None]
        p_n = (u * neutral).sum(1, keepdim=True) / u.sum(1, keepdim=True)
        return p_n * annealed_mean(logits, neutral, self.temperature) + \
            (1 - p_n) * annealed_mean(logits, ~neutral, self.temperature)
    return types.MethodType(decode, classes)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="a checkpoint or exported model with AB_CLASSES")
    p.add_argument("--eval", required=True, help="a folder of colour photos to score")
    p.add_argument("--out", required=True)
    p.add_argument("--train-data", required=True, help="the training run's --data (comma-separated folders)")
    p.add_argument("--rebalance", type=float, required=True, help="the run's CLASS_REBALANCE")
    p.add_argument("--images", type=int, default=800, help="training crops drawn for the colour distribution")
    a = p.parse_args()
    colorizer = Colorizer.load(a.weights, device="cpu")
    classes = getattr(colorizer.network.netG, "classes", None)
    if classes is None:
        sys.exit(f"{a.weights}: not an AB_CLASSES model")
    loss = ClassLoss(classes.bins, a.rebalance)
    loss.prior.copy_(training_prior(classes.bins, a.train_data.split(","), a.images))
    classes.decode = neutral_decode(classes, loss.weights())
    return evaluate(colorizer, a.eval, a.out)


if __name__ == "__main__":
    sys.exit(main())
