"""Shapes and invariants of the networks, on tiny sizes."""
import pytest
import torch
from torch.nn.utils import parametrize

from models import MultiscaleDiscriminator, SelfAttention, UnetGenerator


@pytest.mark.parametrize("size", [(32, 32), (64, 96)])
def test_generator_shape_and_range(size):
    netG = UnetGenerator(ngf=8, n_downs=5, attn_factors=(4,)).eval()
    out = netG(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size)
    with torch.no_grad():  # the output layer is a tanh: ab stays in [-1, 1] however large the pre-activation
        netG.up[-1][2].weight.mul_(1e4)
    saturated = netG(torch.randn(2, 1, *size))
    assert 0.99 < saturated.abs().max() <= 1


def test_generator_rejects_sides_not_multiple_of_depth():
    netG = UnetGenerator(ngf=8, n_downs=5)
    with pytest.raises(ValueError, match="multiples of 32"):
        netG(torch.randn(1, 1, 48, 32))


def test_attention_sits_at_requested_resolution():
    netG = UnetGenerator(ngf=8, n_downs=5, attn_factors=(4, 8))
    seen = []
    for block in netG.attn.values():
        block.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    netG(torch.randn(1, 1, 64, 64))
    assert sorted(seen) == [8, 16]  # 64/8 and 64/4


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_scales(size):
    n_layers = 3
    netD = MultiscaleDiscriminator(3, ndf=8, n_layers=n_layers, num_D=3)
    out = netD(torch.randn(2, 3, size, size))
    assert len(out) == 3
    widths = []
    for feats in out:
        assert len(feats) == n_layers + 2  # n_layers + 1 intermediate features + the patch map
        assert feats[-1].shape[:2] == (2, 1)
        widths.append(feats[0].shape[-1])
    assert widths[0] > widths[1] > widths[2]  # each scale sees a 2x smaller image


def test_attention_is_identity_at_init():
    attn = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(attn(x), x)
    attn.gamma.data.fill_(0.5)
    assert not torch.allclose(attn(x), x)


def _convs(module):
    return [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]


@pytest.mark.parametrize("use_sn", [True, False])
def test_spectral_norm_switch(use_sn):
    netG = UnetGenerator(ngf=8, n_downs=4, attn_factors=(4,), use_sn=use_sn)
    netD = MultiscaleDiscriminator(3, ndf=8, n_layers=2, num_D=2, use_sn=use_sn)
    g_sn = [parametrize.is_parametrized(m, "weight") for m in _convs(netG)]
    d_sn = [parametrize.is_parametrized(m, "weight") for m in _convs(netD)]
    if use_sn:
        assert all(d_sn)
        assert sum(g_sn) == len(g_sn) - 1  # all but the final 2-channel output convolution
    else:
        assert not any(g_sn) and not any(d_sn)


def test_attention_in_query_blocks_matches_one_block():
    attn = SelfAttention(16).eval()  # eval: no power iteration changing the weights between calls
    attn.gamma.data.fill_(1.0)
    x = torch.randn(2, 16, 8, 8)
    whole = attn(x)
    attn.max_map_elements = 2 * 64 * 5  # 5 queries per block, uneven split of 64 positions
    assert torch.allclose(attn(x), whole, atol=1e-6)
