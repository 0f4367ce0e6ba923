"""The local disk under a download: free-space pre-flight, one clear error for a failed write,
and private files for customer data.

A full disk must not cost a downloaded byte: every write error (``pwrite``, ``fdatasync``,
``ftruncate``, the state file, a rename, the SSH repair's copy) becomes :func:`write_error` — a
:class:`FatalError` naming the path, the space still needed and the fix — and the step stops.
Chunks already fsynced stay marked done and verified parts stay verified, so the re-run after
space is freed fetches at most one chunk per connection again.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

from connectors.errors import FatalError

SPACE_MARGIN = 64 * 2**20  # kept free beyond the parts: state file rewrites, file system metadata
KEPT = "verified parts and written chunks are kept"
_FULL = {errno.ENOSPC, errno.EDQUOT}


def size_text(n: int) -> str:
    """Bytes as GiB (or MiB below 1 GiB), rounded up: freeing that much is enough."""
    if n >= 2**30:
        return f"{math.ceil(n / 2**30 * 10) / 10:.1f} GiB"
    return f"{math.ceil(n / 2**20 * 10) / 10:.1f} MiB"


def _existing(path: str | Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system that holds (or will hold) ``path``."""
    p = _existing(path).resolve()
    while not os.path.ismount(p):
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``path``'s file system (None: unknown)."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _space(directory: Path, still_to_write: int) -> tuple[str, int]:
    """("… need X + margin, mount has Y free", bytes to free)."""
    need = still_to_write + SPACE_MARGIN
    free = free_bytes(directory)
    have = f"{size_text(free)} free" if free is not None else "free space unknown"
    text = (f"the remaining parts need {size_text(still_to_write)} + {size_text(SPACE_MARGIN)} margin, "
            f"{mount_point(directory)} has {have}")
    return text, (need - free if free is not None and free < need else need)


def _full_fix(directory: Path, short: int | None) -> str:
    amount = size_text(short) if short else "space"
    return f"free {amount} on {mount_point(directory)} or set [backup] dest_dir elsewhere, then re-run: {KEPT}"


def check_free_space(directory: str | Path, still_to_write: int) -> None:
    """Fail before the first byte when ``directory`` cannot take ``still_to_write`` + the margin."""
    directory = Path(directory)
    free = free_bytes(directory)
    if free is None or free >= still_to_write + SPACE_MARGIN:
        return
    text, short = _space(directory, still_to_write)
    raise FatalError(f"not enough free space for the backup in {directory}: {text}",
                     fix=_full_fix(directory, short))


def write_error(path: str | Path, exc: OSError, directory: str | Path, still_to_write: int | None,
                action: str = "write") -> FatalError:
    """The one error a failed local write (or ``action``) ends the step with. ``path``: the file
    being written; ``still_to_write``: bytes the remaining parts still need (None: not known)."""
    directory = Path(directory)
    path = exc.filename or path
    reason = exc.strerror or str(exc)
    if exc.errno in errno.errorcode:
        reason += f" ({errno.errorcode[exc.errno]})"
    message = f"cannot {action} {path}: {reason}"
    short = None
    if still_to_write is not None:
        text, short = _space(directory, still_to_write)
        message += f"; {text}"
    if exc.errno in _FULL:
        return FatalError(message, fix=_full_fix(directory, short))
    return FatalError(message, fix=f"check that {mount_point(directory)} is writable and healthy (read-only? "
                                   "permissions? I/O errors in the kernel log?) or set [backup] dest_dir elsewhere, "
                                   f"then re-run: {KEPT}")


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset``: near a full disk ``pwrite`` may write part of
    it and return short; the next call then raises ENOSPC."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:  # never loop on a write that makes no progress
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


def open_private(path: str | Path, flags: int) -> int:
    """Open (creating if needed) a file that holds customer data: mode 0600, links not followed."""
    fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a file left by an older release or another tool may be wider
    except OSError:
        os.close(fd)
        raise
    return fd


def make_private_dir(directory: str | Path) -> None:
    """Create ``directory`` and every missing parent, each 0700; existing directories are left as they are."""
    directory = Path(directory)
    missing = [d for d in (directory, *directory.parents) if not d.is_dir()]
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            if not d.is_dir():
                raise
