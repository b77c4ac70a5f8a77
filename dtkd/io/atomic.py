"""Atomic file writes: the file at ``path`` is either the old one or the complete new one.

Every file dtkd writes that a reader may open while it is written (checkpoints, results tables,
plots, cache metadata) goes through :func:`atomic_write`: the bytes go to a temporary file in the
same directory, are flushed and fsynced, then renamed over ``path`` (``os.replace``, atomic on
POSIX and Windows), and the directory is fsynced so the rename survives a crash.
"""
import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "write_text_atomic", "fsync_dir", "remove_stale_temp_files"]


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """``with atomic_write(path) as f: f.write(...)``; on an exception nothing is left behind.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). Parent directories are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode: expected 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def remove_stale_temp_files(directory):
    """Delete the temporary files that writes into ``directory`` killed mid-write (SIGKILL, power
    cut) left behind: ``.<name>.<random>.tmp``. Only while nothing writes into ``directory``,
    e.g. under the trainer's directory lock. Returns the paths removed."""
    removed = []
    for tmp in Path(directory).glob(".*.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def fsync_dir(directory):
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
