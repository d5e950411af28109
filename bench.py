"""Speed and memory of the colorizer, against what the hardware could do.

    python bench.py                                    # a few minutes on a 2-core CPU
    python bench.py --sizes 128,256 --batches 16,64 --steps 20 --mem-budget-gb 16

Training: images/s of the full GAN step (colorize_base.train_step: G, the NUM_D discriminators, all
losses, forward and backward, both optimizer steps, plus the EMA update), with the time spent waiting
for the data loader reported separately. Inference: median latency of Colorizer.colorize, as --infer runs
it, for square inputs of several sizes. Memory: peak process RSS on CPU (each training configuration
in a fresh process, so peaks do not carry over), torch.cuda.max_memory_allocated on CUDA; the largest
batch that fits a budget. The hardware limit: FLOPs of a step counted with FlopCounterMode, against
the matrix-multiply FLOP/s measured in the same run. Prints one table and writes it as JSON.
"""
import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import colorize_base as cb
import training
from backends import TorchNetwork, pick_device
from colorizer import Colorizer, save_png
from data import ColorizationDataset
from files import UserError
from images import find_images
from models import build_generator
from runtime import amp_dtype, autocast_for, wrap_for_processes
from training import build_perceptual, build_vgg

DESIGN_DOC = {128: 150, 256: 25}  # images per batch the design document fits on a 16 GB GPU, by crop size
GB = 1024 ** 3


# -----------------------------------------------------------------------------
# Machine

def machine_info(device):
    """CPU model, cores, GPU, torch version: the context every number below needs."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": None, "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}  # other work competing
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{props.name}, {props.total_memory / GB:.0f} GB"
    return info


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device):
    """Peak bytes: allocated CUDA memory since the last reset, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


def matmul_flops_per_s(device, dtype, n=2048, repeats=3):
    """Best FLOP/s of an n x n torch.mm over a few runs after one warm-up: the practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def run_isolated(fn, *args):
    """fn(*args) in a fresh process, so the peak RSS it measures is its own; returns its result."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(results, fn, args))
    proc.start()
    while True:
        try:
            ok, value = results.get(timeout=1)
            break
        except queue.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__}{args[1:4]}: the process died with exit code {proc.exitcode} "
                                   f"(out of memory?)") from None
    proc.join()
    if not ok:
        raise RuntimeError(f"{fn.__name__}{args[1:4]}: {value}")
    return value


def _child(results, fn, args):
    try:
        results.put((True, fn(*args)))
    except Exception as e:  # reported by the parent, with the configuration that failed
        results.put((False, f"{type(e).__name__}: {e}"))


# -----------------------------------------------------------------------------
# Training

def data_batches(files, size, batch_size, n_batches, num_workers, device):
    """n_batches uint8 RGB batches: random crops of files through the training pipeline, or random
    pixels when there are no files (then the data time is ~0)."""
    if not files:
        batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
        return iter([batch] * n_batches)
    dataset = ColorizationDataset(files, size, train=True)
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch_size * n_batches,
                                             generator=torch.Generator().manual_seed(0))
    return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                            pin_memory=device.type == "cuda"))


def training_stepper(cfg, device, batches, seed=0):
    """A fresh TrainState and a function running one training step on it exactly as train() does
    (training.step: the batch to tensors, hints, train_step, the EMA with its warm-up) on the next
    batch; the function returns (seconds waited for data, the step's losses)."""
    torch.manual_seed(seed)
    state = cb.build_state(cfg, device)
    nets = wrap_for_processes(state, cfg, 1, device)
    amp, vgg, perc = autocast_for(device, cfg), build_vgg(cfg, device), build_perceptual(cfg, device)
    classes = training.build_class_loss(cfg, state.netG, device)

    def one_step():
        t0 = time.perf_counter()
        batch = next(batches)
        wait = time.perf_counter() - t0
        _, losses = training.step(state, batch, cfg, amp, nets, vgg, perc, classes=classes)
        sync(device)
        return wait, losses
    return one_step


def bench_train(cfg, size, batch_size, steps, warmup, device_name, files=None, num_workers=0):
    """Time `steps` full training steps at size x size after `warmup` (the first one counts the FLOPs)."""
    device = torch.device(device_name)
    batches = data_batches(files, size, batch_size, max(1, warmup) + steps, num_workers, device)
    step = training_stepper(cfg, device, batches, cfg["SEED"])
    reset_peak_memory(device)
    with FlopCounterMode(display=False) as counter:
        step()
    for _ in range(warmup - 1):
        step()
    times, waits = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        waits.append(step()[0])
        times.append(time.perf_counter() - t0)
    total, wait = sum(times), sum(waits)
    return {"size": size, "batch": batch_size, "steps": steps, "images_per_s": batch_size * steps / total,
            "compute_images_per_s": batch_size * steps / max(total - wait, 1e-9),
            "step_s_median": statistics.median(times), "data_wait_s_per_step": wait / steps,
            "flops_per_step": counter.get_total_flops(), "peak_memory_bytes": peak_memory(device)}


def compare_train(cfg, changes, size, batch_size, steps, warmup, device_name):
    """The old path and the new path of a change ({constant: (old value, new value)}), timed in this
    process one step each in turn, so that noise from other work hits both alike. Both start from
    the same weights on the same batches, so their first-step losses agree to float tolerance when
    the change is exact."""
    device = torch.device(device_name)
    n = max(1, warmup) + steps
    batch = (torch.rand(n, batch_size, 3, size, size) * 255).to(torch.uint8)
    variants = [{**cfg, **{k: v[i] for k, v in changes.items()}} for i in (0, 1)]
    steppers = [training_stepper(c, device, iter(batch), cfg["SEED"]) for c in variants]
    first = [step()[1].float().cpu() for step in steppers]
    for _ in range(warmup - 1):
        for step in steppers:
            step()
    times = [[], []]
    for _ in range(steps):
        for k, step in enumerate(steppers):
            t0 = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t0)
    return {"changes": {k: [str(x) for x in v] for k, v in changes.items()}, "size": size, "batch": batch_size,
            "steps": steps, "compute": [str(amp_dtype(device, c)).removeprefix("torch.") for c in variants],
            "images_per_s": [batch_size / statistics.median(t) for t in times],
            "first_step_losses": [f.tolist() for f in first],
            "max_loss_difference": float((first[1] - first[0]).abs().max())}


def profile_train(cfg, size, batch_size, device_name, rows=12):
    """torch.profiler table of one full training step (after two warm-up steps): where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    device = torch.device(device_name)
    batch = (torch.rand(3, batch_size, 3, size, size) * 255).to(torch.uint8)
    step = training_stepper(cfg, device, iter(batch), cfg["SEED"])
    step()
    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=44)


def conv_flops_per_s(device, dtype, repeats=3, shape=(16, 64, 64, 64)):
    """Best FLOP/s of a 3x3 convolution (C -> C channels, channels-last), forward alone and forward
    + backward (input and weight gradients, as in training), in dtype: the rate the training step's
    convolutions could reach on this machine."""
    B, C, H, W = shape
    conv = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).to(device, memory_format=torch.channels_last)
    x = torch.randn(shape, device=device).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    amp = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    flops = 2 * B * C * C * 9 * H * W

    def best(fn):
        fn()
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    def forward():
        with torch.no_grad(), amp:
            conv(x)

    def forward_backward():
        with amp:
            y = conv(x)
        y.float().sum().backward()
    return {"forward": flops / best(forward), "forward_backward": 3 * flops / best(forward_backward)}


def max_batch_estimate(points, budget_bytes):
    """Largest batch under budget_bytes from a straight line through (batch, peak bytes) points:
    fixed memory (weights, optimizer state, runtime) plus a cost per image. None with fewer than two batches."""
    batches = sorted({b for b, _ in points})
    if len(batches) < 2:
        return None
    per_image, fixed = np.polyfit([b for b, _ in points], [m for _, m in points], 1)
    if per_image <= 0:
        return None
    return max(0, int(np.floor((budget_bytes - fixed) / per_image + 1e-9)))  # 1e-9: the fit's rounding


def max_batch_cuda(cfg, size, budget_bytes, device_name, limit=4096):
    """Largest batch whose training step stays within budget_bytes of allocated CUDA memory,
    found by doubling and then bisection (one real step at each candidate)."""
    def fits(b):
        try:
            return bench_train(cfg, size, b, 1, 1, device_name)["peak_memory_bytes"] <= budget_bytes
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as e:  # a kernel's 2**31-element limit (upsample at 128 px, batch 2048, on an H200)
            if "INT_MAX" not in str(e):
                raise
            return False
        finally:
            torch.cuda.empty_cache()

    lo, hi = 0, 1
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


# -----------------------------------------------------------------------------
# Inference

def synthetic_photo(size, seed=0):
    """A size x size float RGB image: smooth colour ramps plus noise (the content does not change the speed)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    noise = np.random.default_rng(seed).random((size, size), dtype=np.float32) * 0.2
    return np.clip(np.stack([x, y, 1 - x + noise], axis=2), 0, 1)


def random_colorizer(cfg, device, render_size):
    """A Colorizer with random weights: the same speed and memory as a trained one."""
    torch.manual_seed(cfg["SEED"])
    netG = build_generator(cfg).to(device).eval().requires_grad_(False)
    return Colorizer(TorchNetwork(netG, cfg, device), render_size)


def bench_infer(cfg, sizes, repeats, warmup, device_name, render_size):
    """Median latency of Colorizer.colorize (float32, batch 1, as --infer) for each square input size."""
    device = torch.device(device_name)
    colorizer = random_colorizer(cfg, device, render_size)
    results = []
    for size in sorted(sizes):  # increasing, so the running peak RSS on CPU is this size's peak
        rgb = synthetic_photo(size)
        reset_peak_memory(device)
        with FlopCounterMode(display=False) as counter:
            colorizer.colorize(rgb)
        for _ in range(warmup):
            colorizer.colorize(rgb)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            colorizer.colorize(rgb)  # returns a PIL image: synchronised
            times.append(time.perf_counter() - t0)
        results.append({"input_px": size, "render_px": min(render_size, size), "repeats": repeats,
                        "latency_s_median": statistics.median(times), "flops": counter.get_total_flops(),
                        "peak_memory_bytes": peak_memory(device)})
    return results


def compare_infer(cfg, changes, sizes, repeats, device_name, render_size):
    """Colorizer.colorize latency of the old and the new network of a change, for each (h, w) photo
    size, the two timed in turn in this process (as compare_train). Returns {"HxW": [old s, new s]}."""
    device = torch.device(device_name)
    variants = [{**cfg, **{k: v[i] for k, v in changes.items()}} for i in (0, 1)]
    colorizers = [random_colorizer(c, device, render_size) for c in variants]
    result = {}
    for h, w in sizes:
        rgb = synthetic_photo(max(h, w))[:h, :w]
        times = [[], []]
        for c in colorizers:
            c.colorize(rgb)  # warm-up
        for _ in range(repeats):
            for k, c in enumerate(colorizers):
                t0 = time.perf_counter()
                c.colorize(rgb)
                times[k].append(time.perf_counter() - t0)
        result[f"{h}x{w}"] = [statistics.median(t) for t in times]
    return result


def bench_huge_file(cfg, px, device_name, render_size, folder):
    """--infer on one px x px PNG, from reading the file to writing the PNG: seconds and peak memory
    (the process's peak RSS on CPU: run it isolated)."""
    device = torch.device(device_name)
    path = os.path.join(folder, f"huge_{px}.png")
    colorizer = random_colorizer(cfg, device, render_size)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    save_png(colorizer.colorize(path), os.path.join(folder, f"huge_{px}_out.png"))
    return {"input_px": px, "render_px": render_size, "seconds": time.perf_counter() - t0,
            "peak_memory_bytes": peak_memory(device)}


def bench_engine(backend, weights, h, w, repeats, render_size):
    """Colorizer.colorize of an (h, w) 8-bit photo on one engine (torch or onnx, backends.py): median
    seconds, and the peak RSS of the process (run isolated) above what it held before the model was
    loaded: this process imports torch either way, which the torch-free install does not."""
    before = peak_memory(torch.device("cpu"))
    colorizer = Colorizer.load(weights, device="cpu", render_size=render_size, backend=backend,
                               threads=torch.get_num_threads())  # onnxruntime gets torch's thread count
    y, x = np.mgrid[0:h, 0:w]
    rgb = ((x * 255 // w + y * 255 // h) // 2).astype(np.uint8)  # a gray ramp: the content does not change the speed
    del y, x
    colorizer.colorize(rgb)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        colorizer.colorize(rgb)
        times.append(time.perf_counter() - t0)
    return {"backend": backend, "photo": f"{w}x{h}", "render_px": render_size, "repeats": repeats,
            "latency_s_median": statistics.median(times),
            "peak_memory_bytes": peak_memory(torch.device("cpu")) - before}


def compare_engines(weights, sizes, repeats, render_size):
    """torch against onnxruntime (WEIGHTS and the .onnx beside it) on each (h, w): each engine and
    size in a fresh process, one after the other, so that the peaks are their own."""
    return [run_isolated(bench_engine, backend, weights, h, w, repeats, render_size)
            for h, w in sizes for backend in ("torch", "onnx")]


def engines_agree(weights, inputs):
    """torch against onnxruntime on every photo under inputs, pixel by pixel, as --infer writes them:
    per photo the share of channel values more than 1/255 apart, and the largest difference."""
    by_torch = Colorizer.load(weights, device="cpu", backend="torch")
    by_onnx = Colorizer.load(weights, backend="onnx")
    rows = []
    for f in tqdm(find_images(inputs), desc="torch vs onnxruntime", dynamic_ncols=True):
        gap = np.abs(np.asarray(by_torch.colorize(f), dtype=int) - np.asarray(by_onnx.colorize(f), dtype=int))
        rows.append({"photo": f, "share_over_1": float((gap > 1).mean()), "max": int(gap.max())})
    return rows


def format_engines(results, m):
    lines = [f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}); torch {m['torch']}",
             "engines: Colorizer.colorize on an 8-bit photo, median s / peak RSS GB from loading the model on"]
    for i in range(0, len(results), 2):
        t, o = results[i], results[i + 1]
        lines.append(f"{t['photo']:>10}: torch {t['latency_s_median']:.3f} s / {t['peak_memory_bytes'] / GB:.2f} GB   "
                     f"onnxruntime {o['latency_s_median']:.3f} s / {o['peak_memory_bytes'] / GB:.2f} GB")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Film

def synthetic_clip(path, w, h, frames, fps=25):
    """A gray H.264 clip of frames frames: a ramp that drifts, with noise (film grain), and a cut every
    10 s; encoded fast (x264 ultrafast) so that a 10-minute clip takes a minute or two to make."""
    import av
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w]
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            shot = i // (10 * fps)
            ramp = ((x + 3 * i) % w * 160 // w + 40 + 30 * (shot % 3)).astype(np.uint8)
            gray = np.clip(ramp + rng.integers(-6, 7, (h, w)), 0, 255).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(gray[..., None], 3, 2), format="rgb24")))
        out.mux(stream.encode(None))


def bench_film(weights, w, h, frames, render_size, folder, fps=25):
    """--infer of a synthetic w x h clip of frames frames (colorize_video, the temporal filter on):
    frames per second, and the resident memory (RSS) of the process, sampled every second, from
    loading the model on: its peak, and its mean over the first and the last tenth of the run (equal
    when memory does not grow with the film). Run isolated: the peak is this film's own."""
    import threading

    import video
    clip, out = os.path.join(folder, f"clip_{w}x{h}_{frames}_{fps}.mp4"), os.path.join(folder, f"out_{w}x{h}.mp4")
    if not os.path.exists(clip):
        synthetic_clip(clip, w, h, frames, fps)
    colorizer = Colorizer.load(weights, device="cpu", render_size=render_size, threads=torch.get_num_threads())
    samples, done = [], threading.Event()

    def sample():
        while not done.wait(1.0):
            samples.append(_rss_bytes())
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    stats = video.colorize_video(colorizer, clip, out, progress=False)
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    tenth = max(1, len(samples) // 10)
    return {"film": f"{w}x{h}", "frames": stats["frames"], "fps": fps, "render_px": render_size, "seconds": seconds,
            "frames_per_s": stats["frames"] / seconds, "rss_peak_bytes": max(samples or [_rss_bytes()]),
            "rss_first_tenth_bytes": statistics.mean(samples[:tenth] or [0]),
            "rss_last_tenth_bytes": statistics.mean(samples[-tenth:] or [0])}


def _rss_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def format_film(results, m):
    lines = [f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}); torch {m['torch']}",
             "film: --infer of a synthetic gray clip (temporal filter on); frames/s, RSS GB (peak; first / last tenth)"]
    for r in results:
        seconds = r["frames"] / r.get("fps", 25)
        length = f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"
        lines.append(f"{r['film']:>9}, {r['frames']} frames ({length} at {r.get('fps', 25)} fps) "
                     f"at render {r['render_px']}: {r['frames_per_s']:.2f} frames/s "
                     f"({r['seconds']:.0f} s); RSS {r['rss_peak_bytes'] / GB:.2f} GB (first tenth "
                     f"{r['rss_first_tenth_bytes'] / GB:.2f}, last {r['rss_last_tenth_bytes'] / GB:.2f})")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Reference photos

def bench_reference(weights, side, render_size, repeats):
    """reference.reference_hints for a side x side photo (its L at render size included) and a side x
    side reference, its mirror image: median seconds, and Colorizer.colorize with and without it; and
    colorize with 10 colour hints, their errors spread (HINT_SPREAD) and not."""
    import reference as matching
    colorizer = Colorizer.load(weights, device="cpu", render_size=render_size, threads=torch.get_num_threads())
    rgb = synthetic_photo(side)
    gray, mirror = np.repeat(rgb.mean(2, keepdims=True), 3, 2), np.ascontiguousarray(rgb[:, ::-1])
    netG = colorizer.network.netG
    hints = [(int(x), int(y), "#b03030") for x, y in np.random.default_rng(0).integers(0, side, (10, 2))]

    def unspread():
        spread, colorizer.hint_spread = colorizer.hint_spread, 0
        colorizer.colorize(gray, hints=hints)
        colorizer.hint_spread = spread

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)
    return {"photo": f"{side}x{side}", "render_px": render_size,
            "matching_s": timed(lambda: matching.reference_hints(netG, matching.photo_L(gray, render_size), mirror,
                                                                  (side, side))),
            "colorize_s": timed(lambda: colorizer.colorize(gray)),
            "colorize_with_reference_s": timed(lambda: colorizer.colorize(gray, reference=mirror)),
            "colorize_with_hints_s": timed(lambda: colorizer.colorize(gray, hints=hints)),
            "colorize_with_hints_unspread_s": timed(unspread)}


# -----------------------------------------------------------------------------
# Report

def format_report(report):
    m, mm = report["machine"], report["matmul"]
    gpu = m["gpu"] or "no GPU"
    peak = mm["flops_per_s"]
    mem = "peak RSS GB" if m["device"] == "cpu" else "max alloc GB"
    lines = [f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}), {gpu}; "
             f"torch {m['torch']}, device {m['device']}"
             + (f", load average {m['load_avg_1min']:.1f} at start" if m["load_avg_1min"] is not None else ""),
             f"model: {report['model']}",
             f"matmul: {peak / 1e9:.1f} GFLOP/s ({mm['dtype']}, {mm['n']}x{mm['n']} torch.mm, best of {mm['repeats']})",
             *(f"3x3 convolution, {d}: {c['forward'] / 1e9:.1f} GFLOP/s forward, {c['forward_backward'] / 1e9:.1f} "
               f"GFLOP/s forward + backward (16x64x64x64, channels-last)" for d, c in report["conv"].items()),
             "",
             f"training: full GAN step (G + {report['num_D']} D, all losses, forward + backward, both optimizers, "
             f"EMA); {report['data']}",
             f"{'size':>5} {'batch':>5} {'img/s':>8} {'compute img/s':>14} {'step s':>8} {'data wait s':>12} "
             f"{'GFLOP/step':>11} {'of matmul':>10} {'of conv':>8} {mem:>13}"]
    conv = report["conv"][mm["dtype"]]["forward_backward"]  # the rate of the precision the step runs in
    for r in report["train"]:
        rate = r["flops_per_step"] * r["compute_images_per_s"] / r["batch"]
        lines.append(f"{r['size']:>5} {r['batch']:>5} {r['images_per_s']:>8.2f} {r['compute_images_per_s']:>14.2f} "
                     f"{r['step_s_median']:>8.3f} {r['data_wait_s_per_step']:>12.3f} {r['flops_per_step'] / 1e9:>11.1f} "
                     f"{rate / peak:>10.1%} {rate / conv:>8.1%} {r['peak_memory_bytes'] / GB:>13.2f}")
    budget = report["mem_budget_gb"]
    how = "estimated from a line through the peaks above" if m["device"] == "cpu" else "searched on the GPU"
    fits = ", ".join(f"{s} px: {b if b is not None else 'n/a (needs two batch sizes)'}"
                     for s, b in report["max_batch"].items())
    lines.append(f"largest batch within {budget:g} GB ({how}): {fits}")
    lines.append(f"design document, 16 GB GPU: {', '.join(f'{s} px: {b}' for s, b in DESIGN_DOC.items())}")
    for r in report.get("huge", []):
        lines.append(f"huge photo: {r['input_px']}x{r['input_px']} PNG file -> PNG file at render {r['render_px']} px: "
                     f"{r['seconds']:.1f} s, {mem} {r['peak_memory_bytes'] / GB:.2f}")
    lines += ["", f"inference: Colorizer.colorize as --infer (float32, batch 1), network at {report['render_size']} px "
                  f"on the longer side; median of {report['infer'][0]['repeats'] if report['infer'] else 0} runs",
              f"{'input px':>9} {'render px':>10} {'median ms':>10} {'GFLOP':>8} {'of matmul':>10} {mem:>13}"]
    for r in report["infer"]:
        achieved = r["flops"] / r["latency_s_median"] / peak
        lines.append(f"{r['input_px']:>9} {r['render_px']:>10} {r['latency_s_median'] * 1e3:>10.1f} "
                     f"{r['flops'] / 1e9:>8.2f} {achieved:>10.1%} {r['peak_memory_bytes'] / GB:>13.2f}")
    return "\n".join(lines)


def _ints(text):
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--sizes", type=_ints, default=[128, 256], help="training crop sizes, pixels (default 128,256)")
    p.add_argument("--batches", type=_ints, default=None, help="batch sizes (default 2,8 on CPU, 16,64 on CUDA)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 3 CPU, 20 CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1 CPU, 3 CUDA)")
    p.add_argument("--infer-sizes", type=_ints, default=[256, 512, 1024, 2048], help="square inference inputs, px")
    p.add_argument("--repeats", type=int, default=5, help="timed inference runs per size")
    p.add_argument("--compare", nargs="+", metavar="NAME=OLD,NEW", default=None,
                   help="instead of the full report: time the training step with constants at OLD against NEW, "
                        "interleaved in this process, e.g. --compare AMP=off,bf16 CHANNELS_LAST=false,true "
                        "(size and batch: the first of --sizes and --batches)")
    p.add_argument("--set", nargs="+", metavar="NAME=VALUE", default=[],
                   help="constants of colorize_base.py for every measurement, e.g. --set AMP=off CHANNELS_LAST=false")
    p.add_argument("--profile", action="store_true", help="instead of the full report: the torch.profiler table of "
                   "one training step (size and batch: the first of --sizes and --batches)")
    p.add_argument("--huge-px", type=_ints, default=[], help="also run --infer on a PNG of this side, px "
                   "(e.g. 9000: the peak memory of a 81-megapixel photo)")
    p.add_argument("--render-size", type=int, default=cb.CONSTANTS["RENDER_SIZE"], help="inference RENDER_SIZE, px")
    p.add_argument("--engines", action="store_true", help="instead of the full report: inference on torch against "
                                                          "onnxruntime (WEIGHTS and the .onnx beside it) at 256 px, "
                                                          "1024 px and 4096x3072")
    p.add_argument("--agree", nargs="+", metavar="PATH", help="instead of the full report: torch and onnxruntime "
                                                              "outputs compared pixel by pixel on these photos")
    p.add_argument("--film", nargs="+", metavar="WxHxFRAMES[xFPS]", help="instead of the full report: --infer of "
                   "synthetic gray clips, e.g. 432x320x250 1280x720x15000 (10 minutes at 25 fps, the default frame "
                   "rate), 1280x720x1200x2 (10 minutes at 2 fps): frames/s and RSS over the run")
    p.add_argument("--reference", action="store_true", help="instead of the full report: matching a 1024 px "
                   "reference photo to a 1024 px photo (reference.py) at render 256 and 512, and colorize with and "
                   "without it, and with 10 hints, spread and not")
    p.add_argument("--weights", default=cb.resolve_path(cb.CONSTANTS["WEIGHTS"]), help="with --engines and --agree: the model")
    p.add_argument("--mem-budget-gb", type=float, default=16.0, help="memory budget for the largest batch, GB")
    p.add_argument("--data", default=cb.CONSTANTS["DATA_DIR"],
                   help="photos for the data loader (default DATA_DIR); '' = random pixels")
    p.add_argument("--num-workers", type=int, default=cb.CONSTANTS["NUM_WORKERS"], help="data-loading processes")
    p.add_argument("--ngf", type=int, default=cb.CONSTANTS["NGF"], help="generator width")
    p.add_argument("--ndf", type=int, default=cb.CONSTANTS["NDF"], help="discriminator width")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch; 0 = torch's default. On a machine busy with other work, "
                        "threads beyond the free cores make every step much slower")
    p.add_argument("--no-isolate", action="store_true",
                   help="on CPU, run every configuration in this process (faster; peak RSS then only grows)")
    p.add_argument("--out", default=os.path.join(cb.HERE, "results", "bench.json"), help="JSON report path")
    return p


def resolve_data(spec):
    """Image files for the data loader; default paths are relative to this file, as in colorize_base."""
    if not spec:
        return [], "random pixels (no data loading)"
    paths = [p if os.path.isabs(p) else os.path.normpath(os.path.join(cb.HERE, p)) for p in spec.split(",")]
    try:
        files = find_images(paths)
    except FileNotFoundError as e:
        return [], f"random pixels ({e})"
    return files, f"data: {len(files)} photos from {', '.join(paths)}"


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        device = pick_device(args.device)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    batches = args.batches or ([16, 64] if cuda else [2, 8])
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    for name, values in (("--sizes", args.sizes), ("--batches", batches), ("--infer-sizes", args.infer_sizes)):
        if not values or min(values) <= 0:
            print(f"error: {name} must be positive integers, got {values}", file=sys.stderr)
            return 2
    try:
        fixed = {k: v[0] for k, v in parse_changes(args.set, n_values=1).items()}
    except ValueError as e:
        print(f"error: --set: {e}", file=sys.stderr)
        return 2
    cfg = {**cb.CONSTANTS, "NGF": args.ngf, "NDF": args.ndf, **fixed}
    multiple = build_generator(cfg).multiple
    bad = [s for s in args.sizes if s % multiple]
    if bad:
        print(f"error: --sizes must be multiples of the generator's stride {multiple}, got {bad}", file=sys.stderr)
        return 2
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the benchmark processes started below
        torch.set_num_threads(args.threads)
    if args.profile:
        print(profile_train(cfg, args.sizes[0], batches[0], str(device)))
        return 0
    if args.agree:
        rows = engines_agree(args.weights, args.agree)
        worst = max(rows, key=lambda r: r["share_over_1"])
        print(f"{len(rows)} photos: at most {worst['share_over_1']:.2e} of channel values more than 1/255 apart "
              f"({worst['photo']}); largest difference {max(r['max'] for r in rows)}/255")
        write_json({"machine": machine_info(device), "agree": rows}, args.out)
        return 0
    if args.reference:
        results = [bench_reference(args.weights, 1024, r, args.repeats) for r in (256, 512)]
        m = machine_info(device)
        print(f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}); torch {m['torch']}")
        for r in results:
            print(f"reference, {r['photo']} photo and reference at render {r['render_px']}: matching "
                  f"{r['matching_s']:.3f} s; colorize {r['colorize_s']:.3f} s, with the reference "
                  f"{r['colorize_with_reference_s']:.3f} s; with 10 hints {r['colorize_with_hints_s']:.3f} s "
                  f"({r['colorize_with_hints_unspread_s']:.3f} s without spreading them)")
        write_json({"machine": m, "reference": results}, args.out)
        return 0
    if args.film:
        try:
            films = [tuple(int(v) for v in spec.lower().split("x")) for spec in args.film]
            assert all(len(f) in (3, 4) and min(f) > 0 for f in films)
        except (ValueError, AssertionError):
            print(f"error: --film takes WxHxFRAMES or WxHxFRAMESxFPS, e.g. 432x320x250, got {' '.join(args.film)}",
                  file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory() as folder:
            results = [run_isolated(bench_film, args.weights, *film[:3], args.render_size, folder, *film[3:]) for film in films]
        print(format_film(results, machine_info(device)))
        write_json({"machine": machine_info(device), "film": results}, args.out)
        return 0
    if args.engines:
        results = compare_engines(args.weights, [(256, 256), (1024, 1024), (3072, 4096)], args.repeats, args.render_size)
        print(format_engines(results, machine_info(device)))
        write_json({"machine": machine_info(device), "engines": results}, args.out)
        return 0
    if args.compare:
        try:
            changes = parse_changes(args.compare)
        except ValueError as e:
            print(f"error: --compare: {e}", file=sys.stderr)
            return 2
        result = compare_train(cfg, changes, args.sizes[0], batches[0], steps, warmup, str(device))
        result["infer_s"] = compare_infer(cfg, changes, [(256, 256), (1024, 1024), (3072, 4096)], args.repeats,
                                          str(device), args.render_size)
        print(format_compare(result, machine_info(device)))
        write_json({"machine": machine_info(device), "compare": result}, args.out)
        return 0
    report = full_report(cfg, args, device, batches, steps, warmup)
    print(format_report(report))
    write_json(report, args.out)
    return 0


def full_report(cfg, args, device, batches, steps, warmup):
    """Every measurement of the default report: machine peaks, training steps at each size and batch,
    the largest batch, inference at each size and on huge files."""
    cuda = device.type == "cuda"
    files, data_note = resolve_data(args.data)
    isolate = device.type == "cpu" and not args.no_isolate
    dtype = amp_dtype(device, cfg)

    report = {"machine": machine_info(device), "num_D": cfg["NUM_D"], "render_size": args.render_size,
              "model": f"ENCODER {cfg['ENCODER']}, NGF {cfg['NGF']}, NDF {cfg['NDF']}, NUM_D {cfg['NUM_D']}, "
                       f"N_DOWNS {cfg['N_DOWNS']}, "
                       f"ATTN_FACTORS {cfg['ATTN_FACTORS']}, compute {str(dtype).removeprefix('torch.')}",
              "data": data_note, "mem_budget_gb": args.mem_budget_gb, "train": [], "infer": []}
    report["matmul"] = {"flops_per_s": matmul_flops_per_s(device, dtype), "dtype": str(dtype).removeprefix("torch."),
                        "n": 2048, "repeats": 3}
    dtypes = [torch.float32] + ([dtype] if dtype != torch.float32 else [])
    report["conv"] = {str(d).removeprefix("torch."): conv_flops_per_s(device, d) for d in dtypes}
    configs = [(s, b) for s in sorted(args.sizes) for b in sorted(batches)]
    for size, batch in tqdm(configs, desc="train configs", dynamic_ncols=True):
        call = (cfg, size, batch, steps, warmup, str(device), files, args.num_workers)
        report["train"].append(run_isolated(bench_train, *call) if isolate else bench_train(*call))
    budget = int(args.mem_budget_gb * GB)
    report["max_batch"] = {}
    for size in sorted(args.sizes):
        if cuda:
            report["max_batch"][size] = max_batch_cuda(cfg, size, budget, str(device))
        else:
            points = [(r["batch"], r["peak_memory_bytes"]) for r in report["train"] if r["size"] == size]
            report["max_batch"][size] = max_batch_estimate(points, budget)
    call = (cfg, args.infer_sizes, args.repeats, 1, str(device), args.render_size)
    report["infer"] = run_isolated(bench_infer, *call) if isolate else bench_infer(*call)
    with tempfile.TemporaryDirectory() as folder:
        for px in args.huge_px:
            y = np.linspace(0, 255, px, dtype=np.float32)
            gray = ((y[:, None] + y[None, :]) / 2).astype(np.uint8)  # a gray ramp: compresses fast
            Image.fromarray(gray).save(os.path.join(folder, f"huge_{px}.png"), compress_level=1)
            del y, gray
            call = (cfg, px, str(device), args.render_size, folder)
            report.setdefault("huge", []).append(run_isolated(bench_huge_file, *call) if isolate
                                                 else bench_huge_file(*call))

    return report


def write_json(report, path):
    out = os.path.abspath(path)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


def parse_changes(texts, n_values=2):
    """["AMP=off,bf16", ...] -> {"AMP": ("off", "bf16"), ...} (n_values values a name), each value typed
    as on colorize_base's command line."""
    changes = {}
    for text in texts:
        name, _, values = text.partition("=")
        name = name.strip().upper().replace("-", "_")
        if name not in cb.CONSTANTS or values.count(",") != n_values - 1:
            form = "NAME=OLD,NEW" if n_values == 2 else "NAME=VALUE"
            raise ValueError(f"expected {form} with NAME a constant of colorize_base.py, got {text!r}")
        parser = cb.build_parser()
        parser.error = lambda message: (_ for _ in ()).throw(ValueError(message))  # no exit: our own message
        changes[name] = tuple(getattr(parser.parse_args(["--train", cb.flag(name), v]), name) for v in values.split(","))
    return changes


def format_compare(r, m):
    changes = ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in r["changes"].items())
    old, new = r["images_per_s"]
    return "\n".join([
        f"machine: {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}); torch {m['torch']}, device "
        f"{m['device']}" + (f", load average {m['load_avg_1min']:.1f} at start" if m["load_avg_1min"] is not None else ""),
        f"compare: {changes}; training step at {r['size']} px, batch {r['batch']}, median of {r['steps']} steps each, "
        f"interleaved",
        f"old: {old:.2f} img/s ({r['compute'][0]})   new: {new:.2f} img/s ({r['compute'][1]})   speed-up {new / old:.2f}x",
        f"first-step losses, largest difference: {r['max_loss_difference']:.2e} "
        f"(old {['%.4f' % v for v in r['first_step_losses'][0]]}, new {['%.4f' % v for v in r['first_step_losses'][1]]})",
        "inference (Colorizer.colorize, median s), old / new: " + ", ".join(
            f"{size} {old_s:.3f} / {new_s:.3f}" for size, (old_s, new_s) in r.get("infer_s", {}).items())])


if __name__ == "__main__":
    sys.exit(main())
