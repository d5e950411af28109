"""Each loss against a value computed by hand."""
import copy
import math

import pytest
import torch

import colorize_base as cb
import training
from conftest import tiny_cfg
from images import lab_to_net, rgb_to_lab
from losses import LOSS_NAMES, VGGLoss, feature_matching_loss, gan_loss, l1_loss


def _pred(*logit_lists):
    """A fake multi-scale D output: one scale per list, features [dummy, logits]."""
    return [[torch.zeros(1), torch.tensor(v)] for v in logit_lists]


def test_hinge():
    p = _pred([0.5, -2.0])
    assert gan_loss(p, True, "hinge").item() == pytest.approx((0.5 + 3.0) / 2)    # relu(1 - x)
    assert gan_loss(p, False, "hinge").item() == pytest.approx((1.5 + 0.0) / 2)   # relu(1 + x)
    assert gan_loss(p, True, "hinge", for_discriminator=False).item() == pytest.approx(0.75)  # -mean


def test_lsgan():
    p = _pred([0.5, -2.0])
    assert gan_loss(p, True, "lsgan").item() == pytest.approx((0.25 + 9.0) / 2)
    assert gan_loss(p, False, "lsgan").item() == pytest.approx((0.25 + 4.0) / 2)


def test_vanilla_is_bce_with_logits():
    p = _pred([0.0, 2.0])
    expected = (math.log(2) + math.log(1 + math.exp(-2.0))) / 2
    assert gan_loss(p, True, "vanilla").item() == pytest.approx(expected, rel=1e-5)


def test_gan_loss_averages_scales():
    """The mean over each scale's patch map, then the mean over the scales: a scale weighs the same
    whatever the size of its patch map (not 6/3 pooled over patches, not 5 summed, not one scale alone)."""
    p = _pred([0.0, 0.0], [3.0])
    assert gan_loss(p, True, "lsgan").item() == pytest.approx((1.0 + 4.0) / 2)   # (x - 1)^2: 1 and 1 | 4
    assert gan_loss(p, False, "hinge").item() == pytest.approx((1.0 + 4.0) / 2)  # relu(1 + x): 1 and 1 | 4
    assert gan_loss(p, True, "hinge", for_discriminator=False).item() == pytest.approx((0.0 - 3.0) / 2)
    expected = (math.log(2) + math.log(1 + math.exp(-3.0))) / 2  # BCE to real: log 2 and log 2 | log(1 + e^-3)
    assert gan_loss(p, True, "vanilla").item() == pytest.approx(expected, rel=1e-5)


def test_gan_loss_rejects_unknown_mode():
    with pytest.raises(ValueError, match="wgan"):
        gan_loss(_pred([0.0]), True, "wgan")


def test_feature_matching_zero_for_identical_features():
    feats = [[torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4), torch.randn(2, 1, 3, 3)] for _ in range(3)]
    assert feature_matching_loss(feats, feats).item() == 0.0


def test_feature_matching_weights():
    # 2 scales, 2 intermediate layers each (n_layers_D + 1 = 2): weight 4/2 per layer, 1/2 per scale
    fake = [[torch.full((1, 2, 2, 2), 1.0), torch.full((1, 2, 2, 2), 3.0), torch.zeros(1, 1, 1, 1)],
            [torch.full((1, 2, 2, 2), 0.0), torch.full((1, 2, 2, 2), 0.0), torch.zeros(1, 1, 1, 1)]]
    real = [[torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), torch.full((1, 1, 1, 1), 9.0)],
            [torch.full((1, 2, 2, 2), 0.5), torch.zeros(1, 2, 2, 2), torch.full((1, 1, 1, 1), 9.0)]]
    expected = 2.0 * 0.5 * (1.0 + 3.0) + 2.0 * 0.5 * (0.5 + 0.0)  # the patch maps are not matched
    assert feature_matching_loss(fake, real).item() == pytest.approx(expected)


def test_feature_matching_detaches_real():
    real = [[torch.ones(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    fake = [[torch.zeros(1, 2, 2, 2, requires_grad=True), torch.zeros(1, 1, 1, 1)]]
    feature_matching_loss(fake, real).backward()
    assert real[0][0].grad is None and fake[0][0].grad is not None


def test_l1():
    assert l1_loss(torch.tensor([0.5, -0.5]), torch.tensor([0.0, 0.5])).item() == pytest.approx(0.75)


def test_the_neutral_weight_makes_a_tint_on_white_cost_more():
    """Two pixels whose truth is white (light, no chroma) and vivid red; a tint of the same size on each."""
    lab = torch.tensor([[95.0, 0.0, 0.0], [95.0, 60.0, 40.0]]).T.reshape(1, 3, 1, 2)
    real_A, real_B = lab[:, :1] / 50 - 1, lab[:, 1:] / 110
    fake_B = real_B + 0.2
    plain = l1_loss(fake_B, real_B).item()
    assert l1_loss(fake_B, real_B, real_A, 0.0).item() == pytest.approx(plain)
    assert l1_loss(fake_B, real_B, real_A, 2.0).item() == pytest.approx(plain * (3 + 1) / 2)  # white x3, red x1
    dark = torch.full_like(real_A, -0.5)  # L* 25: dark gray is not what false colour counts
    assert l1_loss(fake_B, real_B, dark, 2.0).item() == pytest.approx(plain)


def test_the_step_weighs_l1_on_ab_by_lambda_l1(tmp_path):
    """train_step's loss_G_L1 is LAMBDA_L1 times the mean |fake_B - real_B| of the generator it
    trains, on ab alone (what pix2pix weighs), and its GAN losses are 0 in the NoGAN phase."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1, "--lambda-l1", "7", "--nogan-steps", "1")
    torch.manual_seed(0)
    state = cb.build_state(cfg, torch.device("cpu"))
    netG = copy.deepcopy(state.netG).train()
    real_A, real_B = lab_to_net(rgb_to_lab(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))))
    with torch.no_grad():
        expected = 7 * (netG(real_A) - real_B).abs().mean()
    ok, losses = training.train_step(state, real_A, real_B, cfg)
    assert ok
    named = dict(zip(LOSS_NAMES, losses.tolist()))
    assert named["loss_G_L1"] == pytest.approx(expected.item(), rel=1e-5)
    assert named["loss_D_real"] == named["loss_D_fake"] == named["loss_G_GAN"] == named["loss_G_FM"] == 0


def test_nogan_then_d_warmup_then_gan(tmp_path):
    """--nogan-steps 1 --d-warmup-steps 2: step 0 trains G alone, steps 1 and 2 train D alone (G,
    its batch-norm statistics and its EMA as they were, its losses 0), step 3 trains both."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1, "--nogan-steps", "1", "--d-warmup-steps", "2")
    torch.manual_seed(0)
    state = cb.build_state(cfg, torch.device("cpu"))
    batch = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))

    def snapshot(net):
        return [t.detach().clone() for t in [*net.parameters(), *net.buffers()]]

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a, b))
    trained = []
    for _ in range(4):
        before = snapshot(state.netG), snapshot(state.netD), snapshot(state.netG_ema)
        ok, losses = training.step(state, batch, cfg)
        assert ok
        after = snapshot(state.netG), snapshot(state.netD), snapshot(state.netG_ema)
        trained.append(tuple(not same(b, a) for b, a in zip(before, after)))
        named = dict(zip(LOSS_NAMES, losses.tolist()))
        if 1 <= state.step - 1 <= 2:
            assert named["loss_G_L1"] == named["loss_G_GAN"] == named["loss_G_FM"] == 0 < named["loss_D_real"]
    assert trained == [(True, False, True), (False, True, False), (False, True, False), (True, True, True)]
    assert state.step == 4


def test_a_finetune_averages_at_ema_decay_from_its_first_step(tmp_path):
    """The EMA's warm-up forgets a random init; a fine-tune's EMA starts from a trained one."""
    cfg = tiny_cfg(tmp_path, tmp_path / "run", 1, "--ema-decay", "0.998")
    assert training.ema_decay(cfg, 1) == pytest.approx(2 / 11)
    assert training.ema_decay({**cfg, "INIT": "weights/colorizer.pt"}, 1) == 0.998


def test_vgg_loss_without_weights_says_how_to_provide_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="VGG_WEIGHTS.*downloads nothing"):
        VGGLoss(str(tmp_path / "missing.pth"))


def test_vgg_loss_rejects_wrong_file(tmp_path):
    path = tmp_path / "not_vgg.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG19"):
        VGGLoss(str(path))


def test_vgg_loss_with_local_weights(tmp_path):
    from torchvision.models import vgg19
    path = tmp_path / "vgg19.pth"
    torch.manual_seed(0)
    torch.save(vgg19().state_dict(), path)
    loss = VGGLoss(str(path))
    x = torch.rand(1, 3, 32, 32)
    assert loss(x, x).item() == 0.0
    assert loss(x, torch.rand(1, 3, 32, 32)).item() > 0
