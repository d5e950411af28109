"""How this tool writes files and words failures: UserError (a one-line message, no traceback),
atomic_write (all or nothing, the one way a file that matters is written), OS errors and library
errors in words, the checks a weights file passes before it is opened, and SIGTERM as Ctrl-C.
"""
import argparse
import errno
import os
import re
import signal
import stat
from contextlib import contextmanager, suppress


class UserError(Exception):
    """A problem with what the user asked for or gave; printed as one line, without a traceback."""


# What a constant that a file lacks meant: the value it had before it existed, so an old file (.pt or
# .onnx) keeps meaning what it meant when its default has changed since. A constant added later goes here.
ABSENT_MEANS = {"ENCODER": "unet", "HINT_INPUT": False, "HINT_DECODER": False, "EXPOSURE": 0.0, "MOSAIC": 0.0, "LAMBDA_PERC": 0.0,
                "LAMBDA_CF": 0.0, "FREEZE_STEPS": 0, "NOGAN_STEPS": 0,
                "D_WARMUP_STEPS": 0, "AB_CLASSES": False, "ANNEALED_T": 0.38}


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose refusals (an unknown option, a value of the wrong kind) are one line like every other
    refusal of this tool, "error: ...", exit code 2: argparse's own prints the whole usage first."""

    def error(self, message):
        self.exit(2, f"error: {display_name(message)} (see --help)\n")


# What a terminal would act on in a name: C0 controls (ESC starts escape sequences, CR rewrites the line), DEL,
# C1 controls, and the Unicode line separators and bidirectional overrides (which reorder what is shown)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def display_name(path):
    """A path (or a message holding one) as safe printable text, the one form in which this tool prints
    a name: bytes that are not UTF-8 become U+FFFD, and control characters are escaped (ESC as \\x1b)
    so that a file name can neither drive the terminal nor spoof a line of output."""
    text = os.fsdecode(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)


NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows alike); every name this tool makes fits

TMP_MARK = ".tmp"  # every temporary file's name has it: ".<name>.tmp<pid>"
TMP_NAME = re.compile(r"\..+" + re.escape(TMP_MARK) + r"\d+")  # the whole name of one


def fit_name(stem, suffix=""):
    """stem + suffix cut to NAME_MAX bytes: the stem loses its last characters (whole UTF-8
    characters, never half of one), the suffix (an extension, "_1.png", ".tmp123") is kept."""
    data, room = os.fsencode(stem), NAME_MAX - len(os.fsencode(suffix))
    if len(data) > room:
        cut = max(room, 0)
        while 0 < cut < len(data) and data[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back to the start of its character
            cut -= 1
        data = data[:cut]
    return os.fsdecode(data) + suffix


def describe_os_error(e):
    """An OSError in words a user can act on."""
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EFBIG: "the file is over the size limit of this process",
            errno.ENAMETOOLONG: "the file name is too long",
            }.get(e.errno, e.strerror or str(e))


def make_folders(path):
    """os.makedirs(path, exist_ok=True) without its recursion, so that any depth can be made."""
    missing = []
    while path and not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            if not os.path.isdir(folder):
                raise


def same_file(a, b):
    """True when paths a and b name one file: symlinks resolved, hard links compared by inode."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs_as_output(out, inputs, what="output"):
    """UserError when the output file out is one of the command's input files (under any name):
    writing it would destroy that input."""
    if not os.path.lexists(out):
        return  # a file that does not exist is no input
    for path in inputs:
        if same_file(out, path):
            raise UserError(f"{out}: the {what} is also an input ({path}); writing it would destroy that input, "
                            f"so nothing was written: choose another output file")


def check_writable_target(path, what="file"):
    """UserError unless path is absent or a regular file (symlinks followed): a folder, a FIFO, a
    device or a socket is never replaced by the file written there."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as e:
        raise UserError(f"cannot write the {what} {path}: {describe_os_error(e)}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"cannot write the {what} {path}: it is a folder; choose another file name")
    if not stat.S_ISREG(mode):
        raise UserError(f"cannot write the {what} {path}: it exists and is not a regular file (a pipe, socket or "
                        f"device), so it is left alone; choose another file name")


def atomic_write(path, write, what="file"):
    """Write path all or nothing: write(f) fills a temporary file in the same folder, which is
    flushed to disk and renamed over path. A crash, a kill or a full disk at any moment leaves
    the previous file (if any) whole and, except after kill -9, no temporary file. On any OS
    error, or when path is a folder, pipe, socket or device, raises UserError
    "cannot write the {what} {path}: <why>"."""
    check_writable_target(path, what)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, fit_name("." + name, f"{TMP_MARK}{os.getpid()}"))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # also Ctrl-C / SIGTERM: no partial file is left behind
        with suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise UserError(f"cannot write the {what} {path}: {describe_os_error(e)}") from None
        raise
    with suppress(OSError):  # make the rename itself durable
        fd = os.open(folder, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def remove_stale_temporaries(folder, log):
    """Delete the temporary files of saves that were killed before their rename: regular files
    named ".<name>.tmp<pid>", nothing else (a folder or link of such a name is left, with a line)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        raise UserError(f"cannot read the folder {folder}: {describe_os_error(e)}") from None
    for f in filter(TMP_NAME.fullmatch, names):
        path = os.path.join(folder, f)
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                log(f"warning: left {path} alone: named like an unfinished save's temporary file, but not a file")
                continue
            os.remove(path)
        except OSError as e:
            log(f"warning: cannot remove {path}, left by a save that did not finish: {describe_os_error(e)}")
            continue
        log(f"removed {path}, left by a save that did not finish")


def short_reason(error, width=150):
    """The informative line of a library error, cut to one short line (the whole story is in --debug)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]  # load_state_dict: the first mismatch says more than the heading
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= width else text[: width - 3] + "..."


def check_model_file(path):
    """UserError unless path is a regular file, the first check of every reader of a weights file
    (.pt or .onnx): a FIFO would block and a device be read for ever, so neither is opened."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: weights file does not exist (train with --train, or pass --weights FILE)") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the weights file: {describe_os_error(e)}") from None
    if stat.S_ISDIR(mode):
        raise UserError(f"{path}: is a folder, not a weights file (pass --weights FILE)")
    if not stat.S_ISREG(mode):  # never opened: a FIFO would block, a device read for ever
        raise UserError(f"{path}: not a regular file (a pipe, socket or device), so not read as a weights file")


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM ends the work like Ctrl-C, through the cleanup of every with/finally on the way
    (no half-written output is left); the default SIGTERM would end the process on the spot."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
