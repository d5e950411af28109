"""Networks: the U-Net generator with self-attention (pix2pix + SAGAN) and the
multi-scale PatchGAN discriminator (pix2pixHD)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

HINT_CHANNELS = 3  # colour hints, beside L: hint a, hint b, and a mask that is 1 where a hint is


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
        """Pad (B, C, h, w) on the bottom and right to the next multiple, repeating the edge (L) or
        with zeros (mode="constant", for hints); crop the output back with [..., :h, :w]."""
        m = self.multiple
        return F.pad(x, (0, -x.shape[-1] % m, 0, -x.shape[-2] % m), mode=mode)

    def forward(self, x, hints=None):
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
        return x                                 # (B, 2, H, W)


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
    """The generator described by a config dict (the constants of colorize_base.py)."""
    return UnetGenerator(ngf=cfg["NGF"], n_downs=cfg["N_DOWNS"], attn_factors=tuple(cfg["ATTN_FACTORS"]),
                         use_sn=cfg["SPECTRAL_NORM"], dropout=cfg["DROPOUT"],
                         hint_channels=HINT_CHANNELS if cfg.get("HINT_INPUT", False) else 0)


def with_hint_input(state, netG):
    """An automatic generator's state dict made to fit netG, which also takes hints: its hint branch
    starts at zero, so the widened network computes exactly what the automatic one did until
    fine-tuning teaches it to use hints."""
    if netG.hint_in is None or "hint_in.weight" in state:
        return state
    return {**state, "hint_in.weight": torch.zeros_like(netG.hint_in.weight)}


def build_discriminator(cfg):
    return MultiscaleDiscriminator(3, ndf=cfg["NDF"], n_layers=cfg["N_LAYERS_D"], num_D=cfg["NUM_D"],
                                   use_sn=cfg["SPECTRAL_NORM"])
