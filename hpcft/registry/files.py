"""The files of a version directory: checksums and the SHA256SUMS manifest (written at publish, checked by `hpcft
models show --verify`), copies, permissions (read-only; readable by the project's members or everyone), removal.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

Say = Callable[[str], None]
MANIFEST = "SHA256SUMS"
CARD = "README.md"
BIG = 256 * 2**20  # files above this size get progress lines while they are checksummed
# what an asset may hold: safetensors, JSON and text (tokenizers, chat templates, the card), never a pickle
# (pytorch_model.bin, training_args.bin, optimizer.pt ...: loading one runs code)
SAFE = re.compile(r".*\.(safetensors|json|txt|model|jinja|md)$")


def quiet(_msg: str) -> None:
    pass


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def sha256_file(p: Path, say: Say = quiet) -> str:
    h = hashlib.sha256()
    size, done, shown = p.stat().st_size, 0, 0
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            h.update(chunk)
            done += len(chunk)
            if size >= BIG and done - shown >= BIG:
                shown = done
                say(f"checksum {p.name}: {100 * done // size}%")
    return h.hexdigest()


def write_manifest(d: Path, say: Say = quiet) -> Tuple[int, int]:
    """SHA256SUMS (sha256sum's format, sorted) of every file under d; returns (files, bytes)."""
    lines, total = [], 0
    files = [p for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()
             and p.relative_to(d).as_posix() != MANIFEST]
    for p in files:
        lines.append(f"{sha256_file(p, say)}  {p.relative_to(d).as_posix()}")
        total += p.stat().st_size
    with open(d / MANIFEST, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return len(files), total


def verify(d: Path) -> List[str]:
    """Problems found by checking `d` against its SHA256SUMS (empty: every file is there and intact, none extra)."""
    listed: Dict[str, str] = {}
    try:
        for line in (d / MANIFEST).read_text().splitlines():
            digest, _, rel = line.partition("  ")
            listed[rel] = digest
    except OSError as e:
        return [f"{MANIFEST}: {e.strerror}"]
    problems = []
    for rel, digest in sorted(listed.items()):
        p = d / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: checksum differs")
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not in {MANIFEST}")
    return problems


def protect(d: Path, visibility: str, readers: List[str]) -> None:
    """Published files are read-only; directories and files readable by everyone (visibility all), else by their
    owner and, through POSIX ACLs, the project's members (hpcft.rundir.files)."""
    dmode, fmode = (0o755, 0o444) if visibility == "all" else (0o700, 0o400)
    for p in [d, *d.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, dmode if p.is_dir() else fmode)
    if visibility == "project" and readers:
        from hpcft.rundir import files

        files.share_run_dir(d, readers=readers, writers=[])


def remove_tree(d: Path) -> None:
    """Remove a (read-only) version directory: its directories are made writable first."""
    if not d.exists():
        return
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o700)
    shutil.rmtree(d)


def fsync_dir(path: Path) -> None:
    from hpcft.train.checkpoint import fsync_dir as fsync_dir

    fsync_dir(path)


def copy_tree(src: Path, dest: Path, say: Say, skip: Tuple[str, ...] = (CARD,), only_safe: bool = False) -> None:
    """Copy src into dest (no symlinks; `skip`: top-level names left out). only_safe: SAFE files only, each other
    one named as left out (an asset holds no pickle)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_symlink():
            continue
        if p.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        elif only_safe and not SAFE.match(p.name):
            say(f"leaving out {rel}: assets hold safetensors, JSON and text only (no pickles)")
        elif not (len(rel.parts) == 1 and rel.name in skip):
            if p.stat().st_size >= BIG:
                say(f"copying {rel} ({size_text(p.stat().st_size)})")
            shutil.copyfile(p, dest / rel)
