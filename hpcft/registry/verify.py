"""Is a version intact? Its SHA256SUMS against the digest the ledger recorded at publish, every listed file there
with its size, and every file's sha256 — the last cached per version in a stamp (the manifest's digest, each file's
size and mtime), so a 100 GB model is hashed once, not by every job that starts from it. The stamp is written at
publish next to the version (`<registry>/NAME/.vN.verified.json`) and, by a user who cannot write there, under
`$HPCFT_HOME/registry-verified/`. A version found damaged is marked `corrupt` (hpcft.ledger.assets.mark_corrupt).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hpcft import paths
from hpcft.errors import ConfigError
from hpcft.ledger import assets as db
from hpcft.registry.files import MANIFEST, verify as verify_files

Stats = Dict[str, Tuple[int, int]]


def _stamp_paths(row: db.ModelAsset) -> List[Path]:
    mine = paths.home() / "registry-verified" / row.name / f"v{row.version}.json"
    return [Path(row.path).parent / f".v{row.version}.verified.json", mine] if row.path else [mine]


def _manifest(d: Path) -> Tuple[Optional[str], Dict[str, str]]:
    """(sha256 of SHA256SUMS, {file: digest}); (None, {}) when it cannot be read."""
    try:
        raw = (d / MANIFEST).read_bytes()
    except OSError:
        return None, {}
    listed = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        digest, _, rel = line.partition("  ")
        listed[rel] = digest
    return hashlib.sha256(raw).hexdigest(), listed


def _stats(d: Path, listed: Dict[str, str]) -> Tuple[Stats, List[str]]:
    """({file: (size, mtime_ns)} of the listed files, problems: missing or extra files)."""
    stats: Stats = {}
    problems = []
    for rel in sorted(listed):
        try:
            st = (d / rel).stat()
            stats[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:
            problems.append(f"{rel}: missing")
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not in {MANIFEST}")
    return stats, problems


def _cached(row: db.ModelAsset, digest: str, stats: Stats) -> bool:
    for p in _stamp_paths(row):
        try:
            s = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if s.get("manifest_sha256") == digest and {k: tuple(v) for k, v in (s.get("files") or {}).items()} == stats:
            return True
    return False


def write_stamp(row: db.ModelAsset, digest: str, stats: Stats) -> Optional[Path]:
    """Record that the files with these sizes and mtimes matched the manifest with this digest: the first place
    this user may write (best effort; None when none)."""
    body = json.dumps({"ref": row.ref, "manifest_sha256": digest, "files": {k: list(v) for k, v in stats.items()}})
    for p in _stamp_paths(row):
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(body)
            os.chmod(tmp, 0o644 if row.visibility == "all" else 0o600)
            os.replace(tmp, p)
            return p
        except OSError:
            try:
                tmp.unlink()
            except OSError:
                pass
    return None


def forget_stamps(row: db.ModelAsset) -> None:
    """A deleted version's stamps go with it (best effort)."""
    for p in _stamp_paths(row):
        try:
            p.unlink()
        except OSError:
            pass


def stamp_published(row: db.ModelAsset) -> None:
    """After a publish (its files just hashed): the stamp, so the first job need not hash them again."""
    digest, listed = _manifest(Path(row.path))
    if digest is not None:
        stats, problems = _stats(Path(row.path), listed)
        if not problems:
            write_stamp(row, digest, stats)


def check(row: db.ModelAsset, full: bool = False) -> Tuple[List[str], bool]:
    """(problems, hashed): the manifest against the ledger's digest, the files against the manifest (sizes, and
    checksums unless a stamp shows these very files already matched; `full` hashes anyway)."""
    d = Path(row.path)
    digest, listed = _manifest(d)
    want = (row.meta or {}).get("manifest_sha256")
    if digest is None:
        return [f"{MANIFEST}: missing or unreadable"], False
    if want and digest != want:
        return [f"{MANIFEST}: differs from the one recorded at publish"], False
    stats, problems = _stats(d, listed)
    if problems:
        return problems, False
    if not full and _cached(row, digest, stats):
        return [], False
    problems = verify_files(d)
    if not problems:
        write_stamp(row, digest, stats)
    return problems, True


def require_intact(ledger, row: db.ModelAsset, key: str) -> None:
    """Refuse (one line) a version whose files are damaged, marking it corrupt; a job starting from it calls this
    at submit."""
    problems, _ = check(row)
    if not problems:
        return
    reason = f"{len(problems)} file(s) do not match {MANIFEST}: " + "; ".join(problems[:3])
    db.mark_corrupt(ledger, row.id, reason)
    raise ConfigError(f"{key}: model asset {row.ref} is corrupt ({reason}); it is now marked corrupt; restore its "
                      f"files and run `hpcft models show {row.ref} --verify`, or publish it anew")


def reverify(ledger, row: db.ModelAsset) -> List[str]:
    """`hpcft models show --verify`: hash every file; a published version that fails becomes corrupt, a corrupt
    one that passes (its files restored) published again. Returns the problems."""
    problems, _ = check(row, full=True)
    if problems and row.state == db.PUBLISHED:
        db.mark_corrupt(ledger, row.id, f"{len(problems)} file(s) do not match {MANIFEST}: "
                        + "; ".join(problems[:3]))
    elif not problems and row.state == db.CORRUPT:
        db.set_state(ledger, row.id, db.CORRUPT, db.PUBLISHED, None)
    return problems
