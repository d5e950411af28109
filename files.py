"""How this tool writes files and words failures: UserError (a one-line message, no traceback),
atomic_write (all or nothing, the one way a file that matters is written) and OS errors in words.
"""
import errno
import os
from contextlib import suppress


class UserError(Exception):
    """A problem with what the user asked for or gave; printed as one line, without a traceback."""


TMP_MARK = ".tmp"  # every temporary file's name has it: ".<name>.tmp<pid>"


def describe_os_error(e):
    """An OSError in words a user can act on."""
    return {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EFBIG: "the file is over the size limit of this process",
            errno.ENAMETOOLONG: "the file name is too long",
            }.get(e.errno, e.strerror or str(e))


def atomic_write(path, write, what="file"):
    """Write path all or nothing: write(f) fills a temporary file in the same folder, which is
    flushed to disk and renamed over path. A crash, a kill or a full disk at any moment leaves
    the previous file (if any) whole and, except after kill -9, no temporary file. On any OS
    error, raises UserError "cannot write the {what} {path}: <why>"."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name[:200]}{TMP_MARK}{os.getpid()}")  # stays under the 255-byte name limit
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
    """Delete the temporary files of saves that were killed before their rename."""
    for f in sorted(os.listdir(folder)):
        if f.startswith(".") and TMP_MARK in f:
            os.remove(os.path.join(folder, f))
            log(f"removed {os.path.join(folder, f)}, left by a save that did not finish")
