"""Atomic file writes, shared by every checkpoint writer in dtkd.io.

``with atomic_write(path) as f: f.write(...)`` writes to a temporary file in the target's
directory, flushes and fsyncs it, then renames it over ``path`` (``os.replace``) and fsyncs the
directory: an interrupted or failed write leaves the previous file intact and no partial file
under the target name.
"""
import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


@contextlib.contextmanager
def atomic_write(path):
    """A binary file object whose contents replace ``path`` atomically when the block ends
    without an exception (the parent directory is created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory):
    # Makes the rename itself durable; not possible on every platform (e.g. Windows).
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
