"""A full filesystem (ENOSPC, or EDQUOT: quota exceeded) while the trainer writes its run: one line, one exit code.

`guard(path)` wraps a write: a failure that is a full disk becomes `DiskFull`, which names the file that could not be
written, the filesystem (its mount point) and its free space at that moment. A full disk is recognised by its errno
anywhere in the exception chain, by the message (safetensors raises `SafetensorError("... No space left on device
(os error 28)")`), or, for writers that lose the errno (torch.save raises `RuntimeError("[enforce fail at
inline_container.cc] . unexpected pos ...")`), by the filesystem having less than `NEARLY_FULL` bytes free right
after the failed write. entry.py turns it into exitcodes.DISK_FULL (cause `disk_full`).
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Tuple

ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
MARKERS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")
NEARLY_FULL = 1 << 20  # bytes: a write that failed with less free than this failed for want of space


class DiskFull(Exception):
    """A write of the run failed because its filesystem is full (or the user's quota is spent)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.mount = mount_point(self.path)
        self.free, self.total = space(self.path)
        super().__init__(f"could not write {self.path}: {self.mount} has {human(self.free)} free of "
                         f"{human(self.total)}")

    def line(self, job_id: Optional[int] = None) -> str:
        from hpcft import exitcodes

        job = job_id if job_id is not None else "JOB"
        return (f"disk full: {self}; free space, then hpcft retry --exit-codes {exitcodes.DISK_FULL} or "
                f"hpcft resume {job}")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def found_in(e: BaseException) -> Optional[DiskFull]:
    """The DiskFull in e's chain, if any."""
    return next((x for x in _chain(e) if isinstance(x, DiskFull)), None)


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in e's chain, by errno or by message."""
    for x in _chain(e):
        if isinstance(x, DiskFull) or getattr(x, "errno", None) in ERRNOS:
            return True
        if any(m in str(x).lower() for m in MARKERS):
            return True
    return False


def failed_file(e: BaseException) -> Optional[str]:
    """The file an OSError in e's chain names, if any."""
    return next((str(x.filename) for x in _chain(e) if isinstance(x, OSError) and x.filename), None)


def _existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def mount_point(path: Path) -> Path:
    p = _existing(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def space(path: Path) -> Tuple[int, int]:
    """(bytes free to this user, bytes in all) of the filesystem holding `path`."""
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return 0, 0
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def looks_full(path: Path) -> bool:
    free, total = space(path)
    return total > 0 and free < NEARLY_FULL


def human(n: int) -> str:
    x = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if x < 1024 or unit == "TiB":
            return f"{int(x)} B" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    return f"{n} B"


def newest_file(path: Path) -> Path:
    """`path` itself, or (a directory) the file under it written last: the one being written when the disk filled."""
    path = Path(path)
    if not path.is_dir():
        return path
    files = [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    try:
        return max(files, key=lambda f: f.stat().st_mtime_ns) if files else path
    except OSError:
        return path


def as_disk_full(e: BaseException, path: Path) -> Optional[DiskFull]:
    """e as a DiskFull naming the file it failed on (`path`, a file or the directory being written), or None when
    it is not a full disk."""
    known = found_in(e)
    if known is not None:
        return known
    if is_disk_full(e) or (isinstance(e, Exception) and looks_full(path)):
        return DiskFull(Path(failed_file(e) or newest_file(path)))
    return None


@contextmanager
def guard(path: Path) -> Iterator[None]:
    """Raise DiskFull (from the original error) when the writes inside fail for a full disk."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        full = as_disk_full(e, Path(path))
        if full is None:
            raise
        raise full from e
