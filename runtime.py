"""The plumbing of a training run, apart from the step itself: devices, threads and precision,
processes under torchrun (start, DistributedDataParallel, agreeing on a stop), the run folder's
lock, stop signals, the data order that resumes exactly, the CSV log and the sample grids."""
import csv
import os
import signal
import stat
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from PIL import Image, ImageDraw
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.utils import make_grid

from backends import pick_device
from files import UserError, atomic_write, describe_os_error
from images import lab_to_net, lab_to_rgb, net_to_lab, rgb_to_lab, without_colour
from losses import LOSS_NAMES


def cpu_has_native_bf16():
    """True on CPUs that run bf16 convolutions natively (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates bf16 and it is slower than float32."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def amp_dtype(device, cfg):
    """The dtype the convolutions run in: the one AMP names under CUDA autocast; on CPU bf16 where
    native and AMP is bf16; else float32. Weights, optimizer state and checkpoints stay float32."""
    if cfg["AMP"] == "off" or device.type not in ("cuda", "cpu"):
        return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cfg["AMP"] == "bf16" and cpu_has_native_bf16() else torch.float32
    return torch.bfloat16 if cfg["AMP"] == "bf16" else torch.float16


def describe_device(device, cfg):
    """'cpu (2 threads, bfloat16)' or 'cuda:0 (bfloat16)': where and in what precision training runs."""
    threads = f"{torch.get_num_threads()} threads, " if device.type == "cpu" else ""
    return f"{device} ({threads}{str(amp_dtype(device, cfg)).removeprefix('torch.')})"


def autocast_for(device, cfg):
    """Autocast to amp_dtype's precision: on CUDA the dtype AMP names, on a CPU with native bf16
    (AVX512-BF16, AMX) bf16 when AMP is bf16; elsewhere nullcontext, plain float32."""
    dtype = amp_dtype(device, cfg)
    return nullcontext() if dtype == torch.float32 else torch.autocast(device.type, dtype=dtype)


def any_rank(flag, device):
    """True when flag is true in any training process (just the flag itself without torchrun)."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([float(bool(flag))], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item() > 0


def init_distributed(cfg):
    """(rank, world size, device): from torchrun's environment, else (0, 1, the chosen device).
    One process per GPU with NCCL; on CPU, gloo (for testing the multi-process path). Training uses
    one crop size, so cuDNN may time its kernels once (benchmark mode)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(cfg["DEVICE"])
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if world == 1:
        return 0, 1, device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def rng_state(device):
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


@contextmanager
def lock_run_dir(run_dir):
    """Create run_dir and hold an exclusive lock on it, so a second run there stops with a message
    instead of both writing one checkpoint. The OS drops the lock when the process dies, even by kill -9."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir}: {describe_os_error(e)}") from None
    check_run_dir(run_dir)
    try:
        lock = open(os.path.join(run_dir, "lock"), "w")
    except OSError as e:
        raise UserError(f"cannot create the lock file {os.path.join(run_dir, 'lock')}: {describe_os_error(e)}") from None
    try:
        try:
            import fcntl  # POSIX only; elsewhere runs are not locked
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            raise UserError(f"{run_dir} is in use by another training run; wait for it to end or use another "
                            f"--run-dir") from None
        yield
    finally:
        lock.close()


RUN_FILES = {"checkpoint.pt": "file", "log.csv": "file", "lock": "file", "samples": "folder"}  # what a run writes


def check_run_dir(run_dir):
    """UserError naming the first entry of run_dir that a run writes (RUN_FILES) and that is of the
    wrong kind: a folder named log.csv, a file named samples, a pipe named lock... Checked before
    the run starts, so it never fails hours later, and nothing there is moved or deleted."""
    for name, kind in RUN_FILES.items():
        path = os.path.join(run_dir, name)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UserError(f"{path}: cannot use it in the run folder: {describe_os_error(e)}") from None
        is_kind = stat.S_ISDIR(mode) if kind == "folder" else stat.S_ISREG(mode)
        if not is_kind:
            found = "a folder" if stat.S_ISDIR(mode) else "a file" if stat.S_ISREG(mode) else \
                "a pipe, socket or device"
            raise UserError(f"{path}: is {found}, but a training run keeps a {kind} of this name there; move it "
                            f"away or use another --run-dir")


@contextmanager
def stop_signals(log):
    """Ctrl-C and SIGTERM (a job scheduler) ask the loop to stop after the current step: yields a
    list that becomes non-empty then. A second signal aborts at once."""
    stop = []

    def request_stop(signum, frame):
        if stop:
            raise KeyboardInterrupt
        stop.append(signum)
        log(f"{signal.Signals(signum).name}: saving a checkpoint after this step (send again to abort)")

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class EpochSampler:
    """Indices epoch after epoch, each epoch a permutation seeded by (seed, epoch) and cut to whole
    batches, so a resumed run can start at any (epoch, batch) without replaying the data.

    With several processes (torchrun), a global batch is batch_size * world consecutive indices of
    the permutation and process `rank` takes every world-th of them: the shards never overlap.
    With weights, an epoch is n draws with replacement in proportion to them instead."""

    def __init__(self, n, batch_size, seed, epoch=0, batch=0, rank=0, world=1, weights=None):
        self.n, self.batch_size, self.seed, self.epoch, self.batch = n, batch_size, seed, epoch, batch
        self.rank, self.world = rank, world
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __iter__(self):
        global_batch = self.batch_size * self.world
        epoch, start = self.epoch, self.batch * global_batch
        while True:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            if self.weights is None:
                perm = torch.randperm(self.n, generator=g)
            else:  # n draws with replacement, each index with probability proportional to its weight
                perm = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
            perm = perm[: self.n // global_batch * global_batch]
            yield from perm[start + self.rank::self.world].tolist()
            epoch, start = epoch + 1, 0


def _ignore_stop_signals(worker_id):
    # data workers leave Ctrl-C / SIGTERM to the main process, which saves and then shuts them down
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class CSVLog:
    """log.csv: every LOG_EVERY steps, the mean of each loss since the last row, the skipped steps,
    images/s and the time spent waiting for data. Opening it drops rows after the resumed step."""
    COLUMNS = ("step", "epoch", *LOSS_NAMES, "bad_steps", "images_per_s", "data_wait_s")

    def __init__(self, path, step, enabled=True):
        self.path, self.enabled = path, enabled
        self.sums, self.n, self.t0, self.data_wait, self.images = torch.zeros(len(LOSS_NAMES)), 0, time.time(), 0.0, 0
        if enabled:
            rows, same_columns = self._read()
            kept = [r for r in rows if len(r) == len(self.COLUMNS) and r[0].isdigit() and int(r[0]) <= step]
            if kept != rows or not rows or not same_columns:  # a kill can leave rows past the checkpoint,
                self._rewrite(kept)                           # or a row cut short

    def _read(self):
        """(rows in COLUMNS order, whether the file has these columns): a log written with other
        columns (an older version) is mapped by its header, a column it lacks left empty."""
        if not os.path.exists(self.path):
            return [], True
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: not a file, so it cannot be the run's log; move it away or use another "
                            f"--run-dir")
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                header, *rows = list(csv.reader(f)) or [[]]
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            why = describe_os_error(e) if isinstance(e, OSError) else f"not a CSV log ({e})"
            raise UserError(f"{self.path}: cannot read the run's log: {why}; move it away or use another "
                            f"--run-dir") from None
        if list(header) == list(self.COLUMNS):
            return rows, True
        where = {name: i for i, name in enumerate(header)}
        return [[r[where[c]] if c in where and where[c] < len(r) else "" for c in self.COLUMNS]
                for r in rows if len(r) == len(header)], False

    def _rewrite(self, rows):
        text = ",".join(self.COLUMNS) + "\r\n" + "".join(",".join(r) + "\r\n" for r in rows)
        atomic_write(self.path, lambda f: f.write(text.encode()), "log")

    def add(self, losses, images, data_wait):
        self.sums += losses
        self.n += 1
        self.images += images
        self.data_wait += data_wait

    def write(self, state):
        """Append one row of means since the last row, flushed at once."""
        if self.enabled and self.n:
            values = [f"{v:.5f}" for v in (self.sums / self.n).tolist()]
            row = [state.step, state.epoch, *values, state.bad_steps,
                   f"{self.images / (time.time() - self.t0):.2f}", f"{self.data_wait:.2f}"]
            try:
                with open(self.path, "a", newline="") as f:
                    csv.writer(f).writerow(row)
            except OSError as e:
                raise UserError(f"cannot write the log {self.path}: {describe_os_error(e)}") from None
        self.sums, self.n, self.t0, self.data_wait, self.images = torch.zeros(len(LOSS_NAMES)), 0, time.time(), 0.0, 0


GRID_COLUMNS = ("gray input", "colorized", "real colour")  # the sample grid's header, one per column
GRID_HEADER = 16  # its height, pixels


def save_sample_grid(netG_ema, sample_rgb, path, device):
    """One row per sample image: gray input | prediction | ground truth, under a header naming them."""
    with torch.no_grad():
        rgb = sample_rgb.to(device).float() / 255
        real_A, _ = lab_to_net(rgb_to_lab(rgb))
        fake = lab_to_rgb(net_to_lab(real_A, netG_ema(real_A)))
        gray = without_colour(rgb)
    rows = torch.stack([gray, fake, rgb], dim=1).flatten(0, 1)  # (3B, 3, H, W)
    cells = make_grid(rows.cpu(), nrow=3, padding=2, pad_value=1.0)
    cells = cells.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    grid = Image.new("RGB", (cells.shape[1], cells.shape[0] + GRID_HEADER), "white")
    grid.paste(Image.fromarray(cells), (0, GRID_HEADER))
    draw, width = ImageDraw.Draw(grid), rgb.shape[-1]
    for j, label in enumerate(GRID_COLUMNS):
        draw.text((2 + j * (width + 2) + 2, 2), label, fill=(0, 0, 0))
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as e:  # a file named samples, a full disk
        raise UserError(f"cannot create the folder of the sample grid {path}: {describe_os_error(e)}") from None
    atomic_write(path, lambda f: grid.save(f, format="png"), "sample")


def make_loader(dataset, weights, batch_size, state, cfg, rank, world, device):
    """Batches from where state left off: the same data order as an uninterrupted run."""
    sampler = EpochSampler(len(dataset), batch_size, cfg["SEED"], state.epoch, state.batch_in_epoch, rank, world,
                           weights)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=cfg["NUM_WORKERS"],
        pin_memory=device.type == "cuda", drop_last=True, persistent_workers=cfg["NUM_WORKERS"] > 0,
        generator=torch.Generator().manual_seed(cfg["SEED"] + state.step + 1_000_003 * rank),
        worker_init_fn=_ignore_stop_signals)


def wrap_for_processes(state, cfg, world, device):
    """(netG, netD) in train mode, a pretrained encoder held fixed for the first FREEZE_STEPS steps,
    wrapped in DistributedDataParallel under torchrun. Called again when the encoder is released:
    DDP records which parameters train when it wraps."""
    if hasattr(state.netG, "freeze_encoder"):
        state.netG.freeze_encoder(state.step < cfg["FREEZE_STEPS"])
    state.netG.train()
    state.netD.train()
    if world == 1:
        return state.netG, state.netD
    ids = [device.index] if device.type == "cuda" else None
    return DDP(state.netG, device_ids=ids), DDP(state.netD, device_ids=ids)
