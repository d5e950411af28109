"""A colour photo as a guide: "colour it like this photo" (exemplar-based colorization, by UniColor's
route: Huang et al. 2022, "UniColor: A Unified Framework for Multi-Modal Colorization with Transformer").

The reference becomes colour hints, the input a HINT_INPUT model already takes. Both photos are gray
to the matcher: the generator's own encoder sees the luminance of the photo and of the reference,
and each cell (MATCH_STRIDE render pixels square) of the photo is matched to the reference cell of
most similar features (cosine similarity). A match is kept only when it is confident (similarity
at least MIN_SIMILARITY), unambiguous (MIN_MARGIN over the best match outside the winner's 3x3
neighbourhood) and mutually consistent (the reference cell's own best match lies within one cell
of where it came from). A reference of which too few cells match (MIN_MATCHED_SHARE) gives no
hints at all. Each kept match gives a hint at its photo cell with the reference cell's
mean colour; the network takes its ab and keeps the photo's lightness. Then the reference's palette
(the mean and covariance of its ab) is laid over the whole result (apply_palette) as far as the two
photos look alike as wholes (PALETTE_SIMILARITY, of the mean of their coarsest encoder level): two
dogs share little cell by cell but much as wholes, or as far as their cells match (PALETTE_HINTS).
A reference that matches nothing gives few or no hints and no palette, so the photo stays close to
the automatic result.

augmented_truth makes the oracle reference of exemplar papers: the photo's own truth cropped,
flipped and rescaled, so positions differ and colours are right.
"""
import os
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from files import UserError, display_name
from images import (AB_SCALE, image_to_array, lab_to_net, lab_to_rgb, load_image, photo_to_render, render_shape,
                    render_to_photo, rgb_to_L, rgb_to_lab)
from models import PretrainedUnetGenerator, gray_from_L, imagenet_input

MATCH_STRIDE = 8            # 8 or 16; render pixels per matched cell (the encoder level the features come from)
# cosine similarity, -1..1, that a kept match reaches at least, by encoder: the two feature spaces differ
# in scale (measured on photos/val: at these, a photo's own augmented truth keeps 200-400 of its
# 1024 cells at 256 px, a photo of other things under 10)
MIN_SIMILARITY = {"unet": 0.85, "efficientnet_lite": 0.65}
MIN_SIMILARITY_ALIKE = {"unet": 0.85, "efficientnet_lite": 0.45}  # the same for photos that look alike as wholes (chosen on photos/train pairs)
MIN_MARGIN = 0.02           # cosine similarity by which the best match beats the best one outside its 3x3 neighbourhood
MIN_MATCHED_SHARE = 0.012   # share of the photo's cells that must match, else no hints: chance matches are no evidence
MAX_REFERENCE_HINTS = 48    # most hints one reference gives (training drew at most hints.MAX_TRAIN_HINTS = 50)
MIN_CHROMA = 3.0            # Lab chroma; a reference whose mean chroma is below this has no colour to give
MAX_PIXELS = 100_000_000    # as MAX_PIXELS in colorize_base.py: a larger reference is refused
# The reference's palette (the mean and covariance of its ab) is laid over the whole result, as far as
# the two photos look alike: by the cosine similarity of what they show as wholes (whole_features),
# from nothing at the first number to fully at the second, by encoder. These, MIN_SIMILARITY_ALIKE and
# the three below were chosen on pairs of photos/train (60 same-kind and 60 unrelated,
# tools/reference_sweep.py: the most same-kind colour moved with unrelated references under CIEDE2000
# 2 from the automatic result); photos/val is where they are reported.
PALETTE_SIMILARITY = {"unet": (0.85, 1.0), "efficientnet_lite": (0.35, 0.45)}
# ... and as far as their cells match: fully from this many matched hints on, in proportion below
# (0: by the similarity alone). The U-Net's mean features hardly tell a photo of the same kind from
# one of another; its matched cells do (on photos/val, 0 to 0.2 hints an unrelated pair, 2 to 7 a same-kind one).
PALETTE_HINTS = {"unet": 10, "efficientnet_lite": 0}
# Lab chroma of the network's colour: what is under the first stays (a near-white), from the second
# on (a pale pastel) it moves fully
PALETTE_CHROMA = (2.0, 8.0)
MAX_SPREAD = 1.0            # the palette may narrow the spread of the network's colours, not widen it


class BadReferenceError(UserError, ValueError):
    """A reference photo that cannot guide a colorization; the message names it and says why."""


def load_reference(reference, max_pixels=MAX_PIXELS):
    """A reference given as a path, PIL image or (H, W, 3) / (H, W, 4) uint8 or float array -> (float RGB
    (H, W, 3) in [0, 1], alpha (H, W) or None, the name its errors use). 16-bit, RGBA, palette, CMYK
    files as images.load_image reads them. BadReferenceError naming it when it cannot be read or is
    over max_pixels."""
    if isinstance(reference, (str, os.PathLike)):
        name = "reference photo " + display_name(os.fspath(reference))
        try:
            rgb, alpha = load_image(os.fspath(reference), max_pixels, say_frames=False)
        except ValueError as e:  # images.BadImageError: "PATH: reason"
            raise BadReferenceError(f"reference photo {display_name(str(e))}") from None
        return rgb, alpha, name
    if isinstance(reference, Image.Image):
        name, (W, H) = "reference photo (PIL image)", reference.size
        if W * H > max_pixels:
            raise BadReferenceError(f"{name}: {W}x{H} = {W * H} pixels is over the limit of {max_pixels}")
        rgb, alpha = image_to_array(reference)
        return rgb, alpha, name
    name, arr = "reference photo (array)", np.asarray(reference)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or 0 in arr.shape or arr.dtype.kind not in "uf":
        raise BadReferenceError(f"{name}: expected an (H, W, 3) or (H, W, 4) uint8 or float colour image, "
                                f"got shape {arr.shape} and dtype {arr.dtype}")
    H, W = arr.shape[:2]
    if W * H > max_pixels:
        raise BadReferenceError(f"{name}: {W}x{H} = {W * H} pixels is over the limit of {max_pixels}")
    arr = arr.astype(np.float32) / (255 if arr.dtype == np.uint8 else 65535 if arr.dtype.kind == "u" else 1)
    if not (np.isfinite(arr).all() and 0 <= arr.min() and arr.max() <= 1):
        raise BadReferenceError(f"{name}: float pixels must be finite numbers in [0, 1]")
    return arr[..., :3], (arr[..., 3] if arr.shape[2] == 4 else None), name


def check_colour(lab, opaque, name):
    """BadReferenceError naming the reference when its opaque pixels (opaque >= 0.5) have no colour:
    lab (1, 3, h, w) and opaque (1, 1, h, w) tensors."""
    chroma = torch.hypot(lab[:, 1], lab[:, 2])[opaque[:, 0] >= 0.5]
    if chroma.numel() == 0:
        raise BadReferenceError(f"{name}: it is transparent all over, so it has no colour to give")
    if float(chroma.mean()) < MIN_CHROMA:
        raise BadReferenceError(f"{name}: it is already gray (mean Lab chroma {float(chroma.mean()):.1f}, "
                                f"under {MIN_CHROMA}), so it has no colour to give; use a colour photo")


def check_reference(reference, max_pixels=MAX_PIXELS):
    """BadReferenceError naming the reference unless it can guide a photo: readable, within max_pixels,
    with colour (judged at 256 px, as the matching sees it); before a batch spends any work."""
    rgb, alpha, name = load_reference(reference, max_pixels)
    size = render_shape(*rgb.shape[:2], 256)
    ref = F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None], size)
    opaque = torch.ones_like(ref[:, :1]) if alpha is None else \
        F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(alpha))[None, None], size)
    check_colour(rgb_to_lab(ref), opaque, name)


def photo_L(rgb, render_size):
    """A photo (H, W, 3) float in [0, 1] -> its L in network scaling at render size, (1, 1, h, w) float32:
    what Colorizer.colorize gives the network (the luminance area-averaged, never enlarged)."""
    H, W = rgb.shape[:2]
    L = torch.from_numpy(lab_to_net(rgb_to_L(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]))[0])
    return F.adaptive_avg_pool2d(L, render_shape(H, W, render_size)).clamp(-1, 1).numpy()


def encoder_levels(netG, L, coarsest):
    """The generator's encoder features of a luminance L (1, 1, h, w) in [-1, 1], {stride: (1, C, H/stride,
    W/stride)} for each level from stride 2 to at least coarsest (all a pretrained encoder has)."""
    x = netG.pad(L)
    if isinstance(netG, PretrainedUnetGenerator):
        return dict(zip((2, 4, 8, 16, 32), netG.encoder(imagenet_input(gray_from_L(x)))))
    levels = {}  # the seed's U-Net: its down blocks, as far as they are needed
    for i, block in enumerate(netG.down):
        x = block(x)
        levels[2 ** (i + 1)] = x
        if 2 ** (i + 1) >= coarsest:
            break
    return levels


def encoder_features(netG, L, stride=MATCH_STRIDE, levels=None):
    """The generator's encoder features of a luminance L (1, 1, h, w) in [-1, 1] -> (ceil(h/stride) *
    ceil(w/stride), C) unit vectors, one per stride x stride cell, rows first. Each is the level at
    stride beside the two coarser levels (its context), each normalised, so all count alike: the
    context is what tells a photo of other things from this one. levels: encoder_levels(netG, L, 4 *
    stride), when the caller has them."""
    h, w = L.shape[-2:]
    levels = levels or encoder_levels(netG, L, 4 * stride)
    if stride not in levels:
        raise ValueError(f"stride must be one of {sorted(levels)} for this generator, got {stride}")
    size = levels[stride].shape[-2:]
    feats = torch.cat([F.normalize(F.interpolate(levels[s], size=size, mode="nearest"), dim=1)
                       for s in (stride, 2 * stride, 4 * stride) if s in levels], 1)
    feats = feats[..., :-(-h // stride), :-(-w // stride)]               # (1, C, hc, wc): the cells of L, not of its padding
    return F.normalize(feats[0].flatten(1).T.float(), dim=1)              # (hc * wc, C)


def whole_features(levels, L, usable=None):
    """What a photo shows as a whole: the mean over its cells (those usable, a (rows * cols,) bool mask
    at the coarsest level's stride; None: all) of its coarsest encoder level, (C,). The level nearest
    the classifier's output is what tells a dog from a face (on photos/train pairs, it ranks a same-kind
    reference above an unrelated one 84% of the time for the EfficientNet-Lite pilot, the mean of
    encoder_features 82%: tools/reference_kinds.py)."""
    stride = max(levels)
    h, w = L.shape[-2:]
    deep = levels[stride][0, :, :-(-h // stride), :-(-w // stride)].flatten(1).T.float()  # (cells, C)
    return deep[usable].mean(0) if usable is not None and usable.any() else deep.mean(0)


def cell_means(x, stride):
    """(1, C, h, w) -> the mean of each stride x stride cell, (1, C, ceil(h/stride), ceil(w/stride));
    a cell cut by the border averages the pixels it has."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, -w % stride, 0, -h % stride))
    count = F.avg_pool2d(F.pad(torch.ones_like(x[:, :1]), (0, -w % stride, 0, -h % stride)), stride)
    return F.avg_pool2d(padded, stride) / count


def encoder_kind(netG):
    """The key of MIN_SIMILARITY and PALETTE_SIMILARITY for netG's encoder."""
    return "efficientnet_lite" if isinstance(netG, PretrainedUnetGenerator) else "unet"


def default_similarity(netG):
    """MIN_SIMILARITY for netG's encoder."""
    return MIN_SIMILARITY[encoder_kind(netG)]


def match_cells(P, R, grid_P, grid_R, min_similarity=0.0, min_margin=MIN_MARGIN, usable=None):
    """Matches of photo cells to reference cells, from unit features P (Np, C) and R (Nr, C) of cells
    on grids grid_P and grid_R, (rows, cols) each -> (kept photo cells, their reference cells, their
    similarities), tensors of cell indices (rows first) and similarities. usable: a (Nr,) bool mask of
    the reference cells that may be matched."""
    S = P @ R.T                                                   # (Np, Nr) cosine similarities
    if usable is not None:
        S = S.masked_fill(~usable[None], -2.0)
    sim, best = S.max(1)
    hr, wr = grid_R
    rows, cols = best // wr, best % wr
    # the best match outside the winner's 3x3 neighbourhood: flat or repeated texture is ambiguous
    near = torch.zeros_like(S, dtype=torch.bool)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            r, c = rows + dr, cols + dc
            ok = (r >= 0) & (r < hr) & (c >= 0) & (c < wr)
            near[ok.nonzero()[:, 0], (r * wr + c)[ok]] = True
    second = S.masked_fill(near, -2.0).max(1).values if S.shape[1] > 9 else torch.full_like(sim, -2.0)
    # cycle consistency: the photo cell the reference cell likes best is this one or a neighbour
    back = S.argmax(0)[best]                                      # (Np,) photo cell index
    p = torch.arange(len(P), device=P.device)
    wp = grid_P[1]
    consistent = ((back // wp - p // wp).abs() <= 1) & ((back % wp - p % wp).abs() <= 1)
    keep = (sim >= min_similarity) & (sim - second >= min_margin) & consistent
    if usable is not None:
        keep &= usable[best]
    return p[keep], best[keep], sim[keep]


def spread(cells, scores, grid, max_hints):
    """Of the photo cells (tensor of indices into grid = (rows, cols)), the most confident in each block
    of about (rows * cols / max_hints) cells, then the max_hints most confident of those: hints spread
    over the photo instead of piling onto its most distinctive part. Returns positions into cells."""
    hc, wc = grid
    side = max(1, int(np.sqrt(hc * wc / max_hints)))
    block = (cells // wc // side) * (-(-wc // side)) + (cells % wc) // side
    order = torch.argsort(scores, descending=True)
    chosen, seen = [], set()
    for i in order.tolist():
        b = int(block[i])
        if b not in seen:
            seen.add(b)
            chosen.append(i)
    return chosen[:max_hints]


class Guide(NamedTuple):
    """What a reference gives a photo: hints [(x, y, (r, g, b)), ...] where parts of it match; the
    similarity (cosine, -1..1) of the two photos' whole_features; the mean (2,) and covariance
    (2, 2) of the reference's ab (Lab units, its opaque pixels); and the strength (0..1) with which
    apply_palette lays that palette over the result."""
    hints: list
    similarity: float
    ab_mean: np.ndarray
    ab_cov: np.ndarray
    strength: float


def reference_hints(netG, L_photo, reference, photo_size=None, **kw):
    """The colour hints [(x, y, (r, g, b)), ...] (r, g, b in 0..255) that a reference colour photo
    gives a photo: reference_guide(...).hints."""
    return reference_guide(netG, L_photo, reference, photo_size, **kw).hints


@torch.inference_mode()
def reference_guide(netG, L_photo, reference, photo_size=None, max_hints=MAX_REFERENCE_HINTS, stride=MATCH_STRIDE,
                    min_similarity=None, min_margin=MIN_MARGIN, max_pixels=MAX_PIXELS):
    """The Guide a reference colour photo gives a photo: its matched hints and its palette.

    netG: a loaded generator (checkpoint.load_generator); its encoder does the matching.
    L_photo: the photo's L at render size, (1, 1, h, w) array or tensor in [-1, 1] (photo_L; in
    Colorizer.colorize the `small` it gives the network). photo_size: (W, H) of the photo the hints
    are for; None: the hints are in L_photo's own pixels.
    reference: a path, PIL image or array (load_reference), of any size: it is seen at the photo's
    render scale (its longer side that of L_photo, never enlarged). Its alpha, if any, keeps
    transparent cells out of the matching. min_similarity None: MIN_SIMILARITY for netG's encoder.
    BadReferenceError naming the reference when it cannot be read, is over max_pixels, has no colour
    or is smaller than one matched cell."""
    rgb, alpha, name = load_reference(reference, max_pixels)
    device = next(netG.parameters()).device
    L_photo = torch.as_tensor(L_photo, dtype=torch.float32, device=device)
    h, w = L_photo.shape[-2:]
    W, H = photo_size or (w, h)
    hr, wr = render_shape(*rgb.shape[:2], max(h, w))
    if min(hr, wr) < stride:
        raise BadReferenceError(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} is too small to match (seen at "
                                f"{wr}x{hr}, it needs at least {stride} pixels a side)")
    ref = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(device)
    ref = F.adaptive_avg_pool2d(ref, (hr, wr))                               # (1, 3, hr, wr)
    opaque = torch.ones_like(ref[:, :1]) if alpha is None else \
        F.adaptive_avg_pool2d(torch.from_numpy(alpha)[None, None].to(device), (hr, wr))
    lab = rgb_to_lab(ref)                                                    # (1, 3, hr, wr)
    check_colour(lab, opaque, name)

    L_ref = lab[:, :1] / 50 - 1
    levels_P, levels_R = encoder_levels(netG, L_photo, 4 * stride), encoder_levels(netG, L_ref, 4 * stride)
    P, R = encoder_features(netG, L_photo, stride, levels_P), encoder_features(netG, L_ref, stride, levels_R)
    grid_P, grid_R = (-(-h // stride), -(-w // stride)), (-(-hr // stride), -(-wr // stride))
    usable = (cell_means(opaque, stride) >= 0.5).flatten()
    ab = lab[0, 1:][:, opaque[0, 0] >= 0.5].double()                         # (2, n) the opaque pixels' ab
    deep_usable = (cell_means(opaque, max(levels_R)) >= 0.5).flatten()
    similarity = float(F.cosine_similarity(whole_features(levels_P, L_photo), whole_features(levels_R, L_ref, deep_usable), 0))
    kind = encoder_kind(netG)
    start, full = PALETTE_SIMILARITY[kind]
    guide = Guide([], similarity, ab.mean(1).cpu().numpy(), torch.cov(ab).reshape(2, 2).cpu().numpy(),
                  float(np.clip((similarity - start) / (full - start), 0, 1)))
    if min_similarity is None:  # photos that look alike as wholes may match cell by cell more loosely
        min_similarity = MIN_SIMILARITY[kind] + guide.strength * (MIN_SIMILARITY_ALIKE[kind] - MIN_SIMILARITY[kind])
    cells, matched, sim = match_cells(P, R, grid_P, grid_R, min_similarity, min_margin, usable)
    if len(cells) == 0 or len(cells) < MIN_MATCHED_SHARE * len(P) or max_hints <= 0:
        return guide
    cell_lab = cell_means(lab, stride).flatten(2)[..., matched, None]        # (1, 3, n, 1): each matched cell's mean Lab
    colours = lab_to_rgb(cell_lab)[0, :, :, 0].T                            # (n, 3)
    for i in spread(cells, sim, grid_P, max_hints):
        r, c = divmod(int(cells[i]), grid_P[1])
        r, c = min(r * stride + stride // 2, h - 1), min(c * stride + stride // 2, w - 1)  # the cell's centre
        x, y = render_to_photo(r, c, W, H, w, h)
        guide.hints.append((x, y, tuple(round(255 * float(v), 2) for v in colours[i])))
    if PALETTE_HINTS[kind]:
        guide = guide._replace(strength=max(guide.strength, min(1.0, len(guide.hints) / PALETTE_HINTS[kind])))
    return guide


def _sqrtm(C):
    """The square root of a symmetric positive semi-definite 2x2 matrix."""
    w, V = np.linalg.eigh(C)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


def apply_palette(fake_B, guide):
    """The network's ab (1, 2, h, w) in network scaling, moved toward the reference's palette with
    guide.strength: the linear map that takes the ab's mean and covariance to the reference's
    (Monge-Kantorovich, as in Pitie and Kokaram 2007's colour transfer), fitted to and laid on the
    pixels of clear colour, blended in by strength and by each pixel's chroma (PALETTE_CHROMA), so
    what the network left white or gray stays so."""
    if guide.strength <= 0:
        return fake_B
    ab = fake_B[0].reshape(2, -1).astype(np.float64) * AB_SCALE
    low, high = PALETTE_CHROMA
    weight = np.clip((np.hypot(*ab) - low) / (high - low), 0, 1)          # the pixels that move, and how far
    if weight.sum() < 1:
        return fake_B
    mean = (ab * weight).sum(1, keepdims=True) / weight.sum()              # the statistics of what moves
    cov = np.cov(ab, aweights=weight) + np.eye(2) if (weight > 0).sum() > 1 else np.eye(2)  # + 1: no spread is no map
    root = _sqrtm(cov)
    inv = np.linalg.inv(root)
    w, V = np.linalg.eigh(inv @ _sqrtm(root @ (guide.ab_cov + np.eye(2)) @ root) @ inv)
    A = (V * np.clip(w, 0, MAX_SPREAD)) @ V.T  # a wider spread would push the network's paler colours past gray
    moved = guide.ab_mean[:, None] + A @ (ab - mean)
    return ((ab + guide.strength * weight * (moved - ab)) / AB_SCALE).reshape(fake_B.shape).astype(fake_B.dtype)


def merge_hints(reference_hints, user_hints, W, H, w, h, stride=MATCH_STRIDE):
    """The hints to colorize with when a reference and a user both give some, on a W x H photo seen at
    w x h: the user's win where they are, so a reference hint within one cell (stride render pixels)
    of a user's is left out, and the user's come last (painted over any overlap)."""
    users = [photo_to_render(x, y, W, H, w, h) for x, y, _ in user_hints]

    def clear_of_users(hint):
        r, c = photo_to_render(hint[0], hint[1], W, H, w, h)
        return all(max(abs(r - ur), abs(c - uc)) >= stride for ur, uc in users)
    return [hint for hint in reference_hints if clear_of_users(hint)] + list(user_hints)


def augmented_truth(rgb, rng, keep=(0.6, 0.9), scale=(0.75, 1.25)):
    """The oracle reference of exemplar papers: a photo (H, W, 3) float in [0, 1] cropped to a random
    keep share of each side, flipped left to right half the time and rescaled by a random factor in
    scale (rng: a numpy Generator). Positions differ from the photo's; colours are its own."""
    H, W = rgb.shape[:2]
    h, w = max(1, round(H * rng.uniform(*keep))), max(1, round(W * rng.uniform(*keep)))
    y, x = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    crop = rgb[y:y + h, x:x + w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    s = rng.uniform(*scale)
    img = Image.fromarray(np.round(np.clip(crop, 0, 1) * 255).astype(np.uint8))
    img = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)
    return np.asarray(img, np.float32) / 255
