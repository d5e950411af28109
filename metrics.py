"""Quality metrics for colorization: small pure functions on (H, W, 3) float RGB arrays in [0, 1].

PSNR and SSIM measure fidelity to the original photo, CIEDE2000 the perceived colour
difference, and colourfulness how vivid an image is. Fidelity metrics alone reward a
gray output, so evaluations report them beside a gray baseline and the colourfulness; false
colour counts what a mean hides, colour painted on white and gray things.
"""
import numpy as np
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

NEUTRAL_CHROMA = 8.0  # Lab chroma below which a pixel of the truth counts as white or gray
FALSE_CHROMA = 20.0  # Lab chroma above which a prediction is clearly coloured (a pale pastel is about 20)
PSNR_CAP = 100.0  # dB; PSNR of identical images (infinite by definition), so averages stay finite


def _check_pair(pred, truth):
    if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[2] != 3:
        raise ValueError(f"expected two (H, W, 3) RGB images of the same shape, got {pred.shape} and {truth.shape}")


def psnr(pred, truth):
    """Peak signal-to-noise ratio on RGB in dB (data range 1); identical images give PSNR_CAP."""
    _check_pair(pred, truth)
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if np.array_equal(pred, truth):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(truth, pred, data_range=1.0)))


def ssim(pred, truth):
    """Structural similarity on RGB (7x7 windows, averaged over the channels); 1 for identical images.

    Images smaller than 7 pixels use the largest odd window that fits; below 3 pixels on a side SSIM
    is undefined and the result is NaN (left out of means), so such a photo still gets its other scores.
    """
    _check_pair(pred, truth)
    win = min(7, *pred.shape[:2])
    win -= 1 - win % 2  # the window must be odd
    if win < 3:
        return float("nan")
    return float(structural_similarity(np.asarray(truth, np.float64), np.asarray(pred, np.float64),
                                       data_range=1.0, channel_axis=2, win_size=win))


def _lab_pair(pred, truth):
    _check_pair(pred, truth)
    return rgb2lab(np.asarray(pred, np.float64)), rgb2lab(np.asarray(truth, np.float64))


def ciede2000_lab(lab_p, lab_t):
    """Mean CIEDE2000 colour difference (Sharma et al. 2005) over the pixels of two Lab images, in
    Lab units; 0 for identical images. About 1 is the smallest difference a viewer notices side by
    side; above 10 the colours are clearly different."""
    return float(deltaE_ciede2000(lab_t, lab_p).mean())


def colorfulness(rgb):
    """Colourfulness of Hasler and Suesstrunk (2003) on 0-255 RGB; 0 for a gray image.

    rg = R - G, yb = (R + G) / 2 - B, CF = sqrt(std_rg^2 + std_yb^2) + 0.3 sqrt(mean_rg^2 + mean_yb^2).
    About 33 is 'moderately colourful', above 59 'highly colourful' in their scale.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    rgb = np.asarray(rgb, np.float64) * 255
    R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg, yb = R - G, (R + G) / 2 - B
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def colorfulness_gap(cf_pred, cf_truth):
    """Mean colourfulness of predictions against the ground truth's, as DDColor (Kang et al. 2023) reports it.

    Takes per-image colourfulness values; returns (ratio, absolute difference) of the two means:
    a ratio below 1 means the predictions are duller than the photos.
    """
    pred, truth = float(np.mean(cf_pred)), float(np.mean(cf_truth))
    if truth == 0:
        raise ValueError("the ground truth has zero mean colourfulness: no colour photos to compare with")
    return pred / truth, abs(pred - truth)


def false_colour_lab(lab_p, lab_t, neutral=NEUTRAL_CHROMA, coloured=FALSE_CHROMA, min_share=0.01):
    """Per cent of the truth's (Lab) light neutral pixels (white and light gray: L* >= 50, chroma below
    neutral) to which the prediction gives a clearly visible colour (chroma above coloured).

    It counts the blotches of colour a colorizer paints on white objects, which a mean over all
    pixels hides; 0 for the gray image. NaN (left out of means) when under min_share of the
    pixels are light neutral, so a photo without white things does not count as a success.
    """
    mask = (lab_t[..., 0] >= 50) & (np.hypot(lab_t[..., 1], lab_t[..., 2]) < neutral)
    if mask.mean() < min_share:
        return float("nan")
    return float(100 * (np.hypot(lab_p[..., 1], lab_p[..., 2])[mask] > coloured).mean())


def image_metrics(pred, truth):
    """All per-image metrics of a prediction against its ground truth, as a dict (each image is
    converted to Lab once, for CIEDE2000 and false colour)."""
    lab_p, lab_t = _lab_pair(pred, truth)
    return {"psnr": psnr(pred, truth), "ssim": ssim(pred, truth), "ciede2000": ciede2000_lab(lab_p, lab_t),
            "colorfulness": colorfulness(pred), "false_colour": false_colour_lab(lab_p, lab_t)}
