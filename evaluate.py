"""--eval: colorize the gray version of colour photos and score it against them, beside the gray
image itself as a baseline. Writes metrics.csv, summary.json and sheet.png, and prints a table."""
import csv
import io
import json
import os
import sys
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from tqdm import tqdm

import video
from colorizer import display_name, failure_reason, make_output_dir
from files import UserError, atomic_write, refuse_inputs_as_output
from hints import POINT_SIDE, hex_color, square
from images import (IMG_EXTENSIONS, BadImageError, find_images, gray_version, is_grayscale, load_image, render_shape, render_to_photo,
                    rgb_to_lab, to_8bit)
from metrics import colorfulness, colorfulness_gap, image_metrics

METRICS = ("psnr", "ssim", "ciede2000", "colorfulness", "false_colour")
REPORTS = ("metrics.csv", "summary.json", "sheet.png")  # what --eval writes into its output folder
TRUTH_AUG = "truth-aug"  # --eval --reference truth-aug: each photo's own truth, cropped, flipped and rescaled
MAX_EVAL_HINTS = 65536  # --eval --hints N: at most this many per photo (every pixel of a 256x256 render)


def center_square(rgb, size):
    """Resize the shorter side to size (antialiased) and cut the central size x size square."""
    x = torch.from_numpy(rgb).permute(2, 0, 1)
    x = v2.functional.center_crop(v2.functional.resize(x, size, antialias=True), [size, size])
    return to_8bit(x.permute(1, 2, 0).numpy())


def comparison_sheet(panels, height=256):
    """One row per image, gray | ours | truth, each scaled to the same height; white gaps."""
    gap, rows = 4, []
    for row in panels:
        imgs = [Image.fromarray(np.round(p * 255).astype(np.uint8)) for p in row]
        imgs = [im.resize((max(1, round(im.width * height / im.height)), height), Image.LANCZOS) for im in imgs]
        rows.append(imgs)
    width = max(sum(im.width for im in r) + gap * (len(r) - 1) for r in rows)
    header = 16
    sheet = Image.new("RGB", (width, header + len(rows) * (height + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (title, im) in enumerate(zip(("gray", "ours", "truth"), rows[0])):
        draw.text((k * (im.width + gap) + 4, 2), title, fill="black")
    for i, r in enumerate(rows):
        x = 0
        for im in r:
            sheet.paste(im, (x, header + i * (height + gap)))
            x += im.width + gap
    return sheet


def nanmean(values):
    """Mean of the values that are not NaN (SSIM of a tiny image, false colour of a photo without
    white things); None when there are none."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else None


def summarize(rows):
    """Means over the colour images of each metric, for ours and the gray baseline, and the
    colourfulness of each against the ground truth's (ratio and absolute difference of the means)."""
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {"truth": {"colorfulness": float(np.mean([r["colorfulness_truth"] for r in ok])),
                         "images_with_white": sum(not np.isnan(r["false_colour"]) for r in ok)}}
    methods = (("ours", ""), ("gray", "_gray")) + ((("automatic", "_auto"),) if ok and "psnr_auto" in ok[0] else ())
    for method, suffix in methods:
        means = {m: nanmean([r[m + suffix] for r in ok]) for m in METRICS}
        ratio, diff = colorfulness_gap([r["colorfulness" + suffix] for r in ok], [r["colorfulness_truth"] for r in ok])
        summary[method] = {**means, "colorfulness_ratio": ratio, "colorfulness_abs_diff": diff}
        if "ab_divergence" + suffix in ok[0]:
            summary[method]["ab_divergence"] = float(np.mean([r["ab_divergence" + suffix] for r in ok]))
    return summary


def format_table(summary):
    methods = ("gray", "automatic", "ours") if "automatic" in summary else ("gray", "ours")
    lines = [f"{'metric':38s}" + "".join(f"{m:>10s}" for m in methods)]
    for key, label, fmt in (("psnr", "PSNR, dB (higher is better)", ".2f"), ("ssim", "SSIM (higher is better)", ".4f"),
                            ("ciede2000", "CIEDE2000 (lower is better)", ".2f"),
                            ("colorfulness", f"colourfulness (truth {summary['truth']['colorfulness']:.2f})", ".2f"),
                            ("colorfulness_ratio", "colourfulness / truth's (1 is best)", ".3f"),
                            ("colorfulness_abs_diff", "|colourfulness - truth's| (lower)", ".2f"),
                            ("false_colour", "% of white/gray coloured (lower)", ".2f"),
                            ("ab_divergence", "ab divergence from the reference", ".4f")):
        if key not in summary["ours"]:
            continue
        cells = ["-" if summary[m].get(key) is None else format(summary[m][key], fmt) for m in methods]
        lines.append(f"{label:38s}" + "".join(f"{c:>10s}" for c in cells))
    return "\n".join(lines)


def hints_from_truth(truth, n, rng, render_size, side=POINT_SIDE):
    """n colour hints [(x, y, "#rrggbb"), ...] revealed from a colour photo (H, W, 3) in [0, 1], as a
    user who knew the colours would give them: points drawn uniformly with rng (numpy Generator),
    each with the photo's mean colour over the square the hint covers at render size."""
    H, W = truth.shape[:2]
    h, w = render_shape(H, W, render_size)
    small = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(truth).permute(2, 0, 1)[None], (h, w))[0]
    hints = []
    for p in rng.choice(h * w, size=min(n, h * w), replace=False):
        r, c = divmod(int(p), w)
        colour = small[(slice(None), *square(r, c, side, h, w))].mean((1, 2)).tolist()
        hints.append((*render_to_photo(r, c, W, H, w, h), hex_color(colour)))
    return hints


def score_file(colorizer, path, eval_size, n_hints=0, reference=None):
    """The metrics row of one photo, and its (gray, ours, truth) panels; status "gray" for a photo
    without colour. With n_hints, that many hints revealed from the photo (a seed fixed by its file
    name) guide the colorization. reference(path, truth): the reference photo that guides it; the
    row then also holds the same metrics without it (suffix _auto) and, for both, the divergence of
    their ab from the reference's (ab_divergence). Raises BadImageError for a file that cannot be read."""
    truth, _ = load_image(path, colorizer.max_pixels)
    if eval_size:
        truth = center_square(truth, eval_size)
    row = {"status": "ok", "height": truth.shape[0], "width": truth.shape[1]}
    if is_grayscale(truth):
        return {**row, "status": "gray"}, None
    gray = gray_version(truth)
    hints = None
    if n_hints:
        rng = np.random.default_rng(zlib.crc32(os.path.basename(path).encode("utf-8", "surrogateescape")))
        hints = hints_from_truth(truth, n_hints, rng, colorizer.render_size)
    ref = reference(path, truth) if reference else None
    ours = colorizer.colorize(gray, hints=hints) if ref is None else colorizer.colorize(gray, hints=hints, reference=ref)
    ours = np.asarray(ours, dtype=np.float32) / 255
    row.update(image_metrics(ours, truth))
    row.update({k + "_gray": v for k, v in image_metrics(gray, truth).items()})
    if reference:
        auto = np.asarray(colorizer.colorize(gray, hints=hints), dtype=np.float32) / 255
        row.update({k + "_auto": v for k, v in image_metrics(auto, truth).items()})
        import reference as matching
        ref_rgb = matching.load_reference(ref, colorizer.max_pixels)[0]
        row["ab_divergence"], row["ab_divergence_auto"] = ab_divergence(ours, ref_rgb), ab_divergence(auto, ref_rgb)
    row["colorfulness_truth"] = colorfulness(truth)
    return row, (gray, ours, truth)


def ab_divergence(rgb, reference, bins=32):
    """How far a photo's colours are from a reference's: the Jensen-Shannon divergence (natural log,
    0..ln 2) of their 2-D Lab ab histograms (bins x bins over a, b in -110..110), each counting only
    its pixels of visible colour (chroma over 5; a photo with none counts all)."""
    def histogram(x):
        lab = rgb_to_lab(np.ascontiguousarray(x[..., :3].transpose(2, 0, 1))[None].astype(np.float32))[0]
        a, b = lab[1].ravel(), lab[2].ravel()
        coloured = np.hypot(a, b) > 5
        a, b = (a[coloured], b[coloured]) if coloured.any() else (a, b)
        h, _, _ = np.histogram2d(a, b, bins=bins, range=[[-110, 110], [-110, 110]])
        return (h / max(h.sum(), 1)).ravel()
    return video.js_divergence(histogram(rgb), histogram(reference))


def references(spec, colorizer):
    """--eval --reference: a function (photo path, truth) -> its reference photo. spec "truth-aug":
    the photo's own truth cropped, flipped and rescaled (reference.augmented_truth, a seed fixed by its
    name); else a folder holding, for each photo, a colour photo of the same stem (the first found)."""
    import reference as matching
    colorizer.check_reference()
    if spec == TRUTH_AUG:
        def augmented(path, truth):
            seed = zlib.crc32(os.path.basename(path).encode("utf-8", "surrogateescape") + b"/reference")
            return matching.augmented_truth(truth, np.random.default_rng(seed))
        return augmented
    if not os.path.isdir(spec):
        raise UserError(f"--reference {spec}: with --eval, {TRUTH_AUG} or a folder of reference photos named "
                        f"like the photos")
    by_stem = {}
    for f in sorted(find_images([spec], [])):
        by_stem.setdefault(os.path.splitext(os.path.basename(f))[0], f)

    def same_stem(path, truth):
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem not in by_stem:
            raise UserError(f"no reference photo {stem}.* in {display_name(spec)}")
        return by_stem[stem]
    return same_stem


def eval_files(data_dir, out_dir):
    """(the photos under data_dir, [(folder, why) that could not be read]); UserError when there are
    none, or when a report would be written over one of them."""
    unreadable = []
    try:
        files = find_images([data_dir], unreadable, exclude=out_dir)  # its own reports are no photos to score
    except FileNotFoundError as e:
        raise UserError(f"--eval: {e}") from None
    if not files and unreadable:
        raise UserError(f"--eval {data_dir}: no image files could be found: cannot read the folder "
                        f"{display_name(unreadable[0][0])} ({unreadable[0][1]})")
    if not files:
        raise UserError(f"--eval {data_dir}: no image files there (extensions {', '.join(sorted(IMG_EXTENSIONS))})")
    for report in REPORTS:  # --out inside the data folder: a photo there may be named like a report
        refuse_inputs_as_output(os.path.join(out_dir, report), files, "--eval report")
    return files, unreadable


def evaluate(colorizer, data_dir, out_dir, eval_size=0, num_samples=8, debug=False, n_hints=0, reference=None):
    """Score the colorizer on the colour photos under data_dir; returns the number of files that failed.

    Each photo's gray version goes through colorizer.colorize as with --infer, and is compared with
    the photo, beside the gray version itself as a baseline. n_hints > 0 reveals that many true
    colours per photo as hints (the model must take hints). With eval_size the photo is first cut to
    an eval_size square. reference ("truth-aug" or a folder, see references) adds a reference photo
    to each, scored beside the same model without it. Already-gray photos are listed and left out of the means. Writes metrics.csv
    (one row per file), summary.json and sheet.png (gray | ours | truth for num_samples evenly spaced
    files) into out_dir, and prints a table.
    """
    if n_hints > MAX_EVAL_HINTS:  # fewer would be revealed than said (at most one a render pixel)
        raise UserError(f"--hints {n_hints}: at most {MAX_EVAL_HINTS} hints per photo (one for every pixel of a 256x256 "
                        f"render); a photo rendered smaller gets one on every pixel")
    files, unreadable = eval_files(data_dir, out_dir)
    if n_hints and not colorizer.takes_hints:
        raise UserError(f"--hints {n_hints}: {colorizer.weights} takes no colour hints (trained without HINT_INPUT)")
    reference_spec, reference = reference, references(reference, colorizer) if reference else None
    make_output_dir(out_dir)
    root = data_dir if os.path.isdir(data_dir) else os.path.dirname(data_dir)
    sample = set(files[:: max(1, len(files) // num_samples)][:num_samples])
    rows = [{"file": display_name(os.path.relpath(folder, root)), "status": "failed",  # counted as failures
             "error": f"cannot read this folder ({why}), so the photos in it were not scored"}
            for folder, why in unreadable]
    panels = []
    for f in tqdm(files, desc="eval", unit="img", dynamic_ncols=True):
        try:
            row, panel = score_file(colorizer, f, eval_size, n_hints, reference)
            if panel and f in sample:
                panels.append(panel)
        except Exception as e:  # one bad file must not end the evaluation
            if debug and not isinstance(e, BadImageError):
                raise
            row = {"status": "failed", "error": failure_reason(f, e)}
        rows.append({"file": display_name(os.path.relpath(f, root)), **row})

    gray_files = [r["file"] for r in rows if r["status"] == "gray"]
    failed = [(r["file"], r["error"]) for r in rows if r["status"] == "failed"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    for f in gray_files:
        print(f"gray, left out: {display_name(f)}")
    for f, why in failed:
        print(f"failed: {display_name(f)}: {display_name(why)}", file=sys.stderr)
    write_csv(rows, os.path.join(out_dir, "metrics.csv"))
    if not n_ok:
        raise UserError(f"--eval {data_dir}: no colour photos could be scored "
                        f"({len(gray_files)} gray, {len(failed)} failed)")
    if panels:
        sheet = comparison_sheet(panels)
        atomic_write(os.path.join(out_dir, "sheet.png"), lambda fh: sheet.save(fh, format="PNG"), "report")
    summary = {"data": display_name(os.path.abspath(data_dir)), "weights": colorizer.weights,
               "render_size": colorizer.render_size, "saturation": colorizer.saturation,
               "hint_spread": colorizer.hint_spread if n_hints else None, "eval_size": eval_size,
               "hints": n_hints, "reference": reference_spec, "images": n_ok,
               "gray_left_out": gray_files, "failed": [f for f, _ in failed], **summarize(rows)}
    text = json.dumps(summary, indent=2)
    atomic_write(os.path.join(out_dir, "summary.json"), lambda fh: fh.write(text.encode()), "report")
    size = f"{eval_size} px centre squares" if eval_size else "full size"
    size += f", {n_hints} true-colour hints each" if n_hints else ""
    size += f", guided by reference photos ({reference_spec}; 'automatic': without them)" if reference_spec else ""
    print(f"\n{n_ok} colour photos from {display_name(data_dir)} at {size}, rendered at {colorizer.render_size} px; "
          f"{len(gray_files)} gray left out, {len(failed)} failed")
    print(format_table(summary))
    print(f"wrote metrics.csv, summary.json and sheet.png to {display_name(out_dir)}")
    return len(failed)


def spreadsheet_text(value):
    """A text cell of metrics.csv as a spreadsheet shows it: a file name (or error) starting with =, +, -
    or @ would be run as a formula when the CSV is opened (formula injection, "=HYPERLINK(...)"), so
    it gets a leading ' , which spreadsheets take as "this is text" and do not show. Tab and CR, the
    other starters, are already escaped by display_name."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


def write_csv(rows, path):
    auto = any("psnr_auto" in r for r in rows)
    columns = ["file", "status", "width", "height"] + list(METRICS) + [m + "_gray" for m in METRICS] \
        + ([m + "_auto" for m in METRICS] + ["ab_divergence", "ab_divergence_auto"] if auto else []) \
        + ["colorfulness_truth", "error"]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else spreadsheet_text(v) for k, v in r.items()} for r in rows)
    atomic_write(path, lambda fh: fh.write(buf.getvalue().encode()), "report")


# -----------------------------------------------------------------------------
# --eval DIR --video: one clip's colour frames, scored in time as well

VIDEO_METRICS = ("psnr", "ciede2000", "colorfulness")


def evaluate_video(colorizer, data_dir, out_dir, strength, debug=False):
    """Score the colorizer on one clip with a colour truth: the colour frames in data_dir, in the order
    of their names (numbers compared as numbers). Their gray versions go, in that order, through the
    film pipeline (video.frame_lab and video.TemporalFilter at strength, cuts reset it) and, beside it,
    each frame alone (strength 0). Per frame: PSNR, CIEDE2000 and colourfulness against the truth;
    for the clip: video.cdc and video.flicker of ours, of each frame alone and of the truth. Writes
    metrics.csv (one row per frame) and summary.json into out_dir, prints a table; returns 0. The
    clip is held in memory, so this is for short clips (a few hundred frames)."""
    files, unreadable = eval_files(data_dir, out_dir)
    if unreadable:
        raise UserError(f"--eval {data_dir} --video: cannot read the folder {display_name(unreadable[0][0])}")
    if len(files) < 2:
        raise UserError(f"--eval {data_dir} --video: a clip needs at least 2 frames, got {len(files)}")
    files = sorted(files, key=video.natural_key)
    make_output_dir(out_dir)
    filt = video.TemporalFilter(strength)
    rows, clips = [], {"ours": [], "alone": [], "truth": []}
    for f in tqdm(files, desc="eval clip", unit="frame", dynamic_ncols=True):
        try:
            truth, _ = load_image(f, colorizer.max_pixels)
        except BadImageError as e:
            raise UserError(f"--eval {data_dir} --video: {failure_reason(f, e)}; a clip needs every frame") from None
        if clips["truth"] and truth.shape != clips["truth"][0].shape:
            raise UserError(f"--eval {data_dir} --video: {display_name(f)} is {truth.shape[1]}x{truth.shape[0]}, "
                            f"unlike the frames before it")
        rgb8 = np.round(gray_version(truth) * 255).astype(np.uint8)
        L, ab = video.frame_lab(colorizer, rgb8)
        frames = {"ours": video.compose(L, filt(L, ab)), "alone": video.compose(L, ab)}
        row = {"file": display_name(os.path.relpath(f, data_dir))}
        for method, rgb in frames.items():
            m = image_metrics(rgb.astype(np.float32) / 255, truth)
            row.update({f"{k}_{method}": m[k] for k in VIDEO_METRICS})
            clips[method].append(rgb)
        row["colorfulness_truth"] = colorfulness(truth)
        clips["truth"].append(to_8bit(truth))
        rows.append(row)
    summary = {"data": display_name(os.path.abspath(data_dir)), "weights": colorizer.weights,
               "render_size": colorizer.render_size, "saturation": colorizer.saturation, "temporal": strength,
               "frames": len(files), "cuts": filt.cuts}
    for method, frames in clips.items():
        rgb = [np.asarray(x, np.float32) / 255 if x.dtype == np.uint8 else x for x in frames]
        lab = [rgb_to_lab(x.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0) for x in rgb]
        means = {k: float(np.mean([r[f"{k}_{method}"] for r in rows])) for k in VIDEO_METRICS} if method != "truth" \
            else {"colorfulness": float(np.mean([r["colorfulness_truth"] for r in rows]))}
        summary[method] = {**means, "cdc": video.cdc(rgb), "flicker": video.flicker(lab)}
    columns = ["file"] + [f"{k}_{m}" for m in ("ours", "alone") for k in VIDEO_METRICS] + ["colorfulness_truth"]
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows({k: f"{v:.6g}" if isinstance(v, float) else spreadsheet_text(v) for k, v in r.items()} for r in rows)
    atomic_write(os.path.join(out_dir, "metrics.csv"), lambda fh: fh.write(buf.getvalue().encode()), "report")
    text = json.dumps(summary, indent=2)
    atomic_write(os.path.join(out_dir, "summary.json"), lambda fh: fh.write(text.encode()), "report")
    print(f"\nclip of {len(files)} frames from {display_name(data_dir)}, rendered at {colorizer.render_size} px, "
          f"temporal {strength}; {filt.cuts} cut(s) found")
    print(format_video_table(summary))
    print(f"wrote metrics.csv and summary.json to {display_name(out_dir)}")
    return 0


def format_video_table(summary):
    lines = [f"{'metric':34s}{'alone':>10s}{'ours':>10s}{'truth':>10s}"]
    for key, label, fmt in (("psnr", "PSNR, dB (higher is better)", ".2f"), ("ciede2000", "CIEDE2000 (lower is better)", ".2f"),
                            ("colorfulness", "colourfulness", ".2f"), ("cdc", "CDC (truth's is the aim)", ".5f"),
                            ("flicker", "flicker (lower is steadier)", ".3f")):
        cells = [format(summary[m][key], fmt) if key in summary[m] else "-" for m in ("alone", "ours", "truth")]
        lines.append(f"{label:34s}{cells[0]:>10s}{cells[1]:>10s}{cells[2]:>10s}")
    return "\n".join(lines)
