"""Run directories on disk: private by default, shared with named users through POSIX ACLs.

- `make_run_dir(path)`: the run directory and its `logs/`, mode 0700 (set with chmod, whatever the umask), owned by
  the calling (submitting) user. An existing directory keeps its mode: a chmod would also cut the ACL mask of a
  directory that is already shared.
- `share_run_dir(path, readers, writers)`: exactly these users (besides the owner) may read (`rX`) or read and
  write (`rwX`) the whole tree, now and later: the same entries go into the directories' default ACLs, so files the
  job writes afterwards inherit them. Named users not listed any more lose their entries. Runs `setfacl` (package
  `acl`); the argv is built by the pure `setfacl_argv`.

Limit of default ACLs: a file created later with a restrictive mode (e.g. `tempfile.mkstemp`, 0600) gets a mask of
`---` and stays private to its owner until the next `share_run_dir`, which recomputes every mask.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Set

from hpcft.errors import HpcftError

RUN_DIR_MODE = 0o700
READ = "rX"  # X: execute (enter) on directories only
WRITE = "rwX"
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")  # POSIX portable user names (plus a Samba-style trailing $)
ACL_PACKAGE_HINT = "install the acl package (Debian/Ubuntu: apt-get install acl; RHEL: dnf install acl)"


def make_run_dir(path) -> Path:
    """Create `path` and `path/logs` with mode 0700 (parents as the umask says). Returns the path."""
    path = Path(path)
    for d in (path, path / "logs"):
        try:
            d.mkdir(mode=RUN_DIR_MODE, parents=True)
        except FileExistsError:
            if not d.is_dir():
                raise HpcftError(f"{d} exists and is not a directory; choose another output_dir") from None
            continue
        os.chmod(d, RUN_DIR_MODE)  # mkdir's mode is filtered by the umask (and by a parent's default ACL)
    return path


def _check_users(names: Iterable[str]) -> List[str]:
    out = []
    for name in names:
        if not _USER.match(name):
            raise HpcftError(f"{name!r}: not a user name; share with login names such as alice")
        if name not in out:
            out.append(name)
    return out


def acl_entries(readers: Sequence[str], writers: Sequence[str], owner: Optional[str] = None) -> List[str]:
    """setfacl -m entries: access and default entries for every reader (rX) and writer (rwX); a user in both is a
    writer. With writers, the owner gets a default entry too, so files a writer creates stay the owner's to read."""
    writers = _check_users(writers)
    readers = [r for r in _check_users(readers) if r not in writers]
    entries = []
    for name, perm in [(r, READ) for r in readers] + [(w, WRITE) for w in writers]:
        entries += [f"u:{name}:{perm}", f"d:u:{name}:{perm}"]
    if writers and owner:
        entries.append(f"d:u:{_check_users([owner])[0]}:{WRITE}")
    return entries


def setfacl_argv(path, readers: Sequence[str], writers: Sequence[str], drop: Iterable[str] = (),
                 owner: Optional[str] = None) -> List[str]:
    """ONE setfacl call on the whole tree (-R, physical walk: symlinks are not followed): first remove the named
    entries of `drop` (users no longer listed), then add `readers` and `writers`. Pure: nothing runs."""
    keep = set(readers) | set(writers) | ({owner} if writers and owner else set())
    drop = sorted(set(_check_users(drop)) - keep)
    argv = ["setfacl", "-R", "-P"]
    if drop:
        argv += ["-x", ",".join(e for name in drop for e in (f"u:{name}", f"d:u:{name}"))]
    entries = acl_entries(readers, writers, owner)
    if entries:
        argv += ["-m", ",".join(entries)]
    if not drop and not entries:
        return []  # nothing to add or remove
    return argv + ["--", str(path)]


def getfacl_argv(path) -> List[str]:
    return ["getfacl", "-R", "-P", "-p", "-c", "--", str(path)]


def parse_acl_users(getfacl_output: str) -> Set[str]:
    """Named users in getfacl output (access and default entries: `user:bob:r-x`, `default:user:bob:r-x`)."""
    users = set()
    for line in getfacl_output.splitlines():
        parts = line.split("#", 1)[0].strip().split(":")
        if parts[:1] == ["default"]:
            parts = parts[1:]
        if len(parts) >= 3 and parts[0] == "user" and parts[1]:
            users.add(parts[1])
    return users


def _run(argv: List[str], path) -> subprocess.CompletedProcess:
    if not shutil.which(argv[0]):
        raise HpcftError(f"{argv[0]} not found: {ACL_PACKAGE_HINT} to share run directories")
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        raise HpcftError(f"{argv[0]} on {path} did not finish in 300 s") from None


def _failed(argv: List[str], path, proc: subprocess.CompletedProcess) -> HpcftError:
    err = proc.stderr.strip()
    if "Operation not supported" in err:
        return HpcftError(f"the filesystem of {path} has no POSIX ACL support (mount it with acl, or keep run "
                          "directories on one that has it): run directory not shared")
    line = next((x for x in err.splitlines() if x.strip()), f"exit code {proc.returncode}")
    return HpcftError(f"{argv[0]} failed on {path}: {line}")


def not_permitted(setfacl_stderr: str, top) -> Optional[List[str]]:
    """The paths setfacl could not change because another user owns them (a writer's files), when that is the only
    kind of error and the top directory is not among them; else None (a real failure)."""
    paths = []
    for line in setfacl_stderr.splitlines():
        if not line.strip():
            continue
        m = re.match(r"^setfacl: (.*): Operation not permitted$", line.strip())
        if not m or m.group(1) == str(top):
            return None
        paths.append(m.group(1))
    return paths


def share_run_dir(path, readers: Sequence[str], writers: Sequence[str]) -> List[str]:
    """Give exactly `readers` (read) and `writers` (read-write) access to the run directory tree at `path`, now and
    for files written later; other named users lose theirs. Empty lists make it private to its owner again.
    Returns the paths left as they were because another user owns them (files a writer created: only their owner
    may change their ACLs; every path goes through `path`, whose own ACL decides who reaches them).
    HpcftError (one line) for a missing setfacl, a filesystem without ACLs, an unknown user or a setfacl failure."""
    path = Path(path)
    if not path.is_dir():
        raise HpcftError(f"{path}: no such run directory")
    wanted = _check_users(list(readers) + list(writers))
    for name in wanted:
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise HpcftError(f"{name}: no such user on this machine; share with existing login names") from None
    try:
        owner: Optional[str] = pwd.getpwuid(path.stat().st_uid).pw_name
    except KeyError:  # a uid without a name here: no default entry for the owner
        owner = None
    listing = _run(getfacl_argv(path), path)
    if listing.returncode != 0 and not listing.stdout.strip():  # (a writer's unreadable files: keep what it read)
        raise _failed(getfacl_argv(path), path, listing)
    argv = setfacl_argv(path, readers, writers, drop=parse_acl_users(listing.stdout), owner=owner)
    if not argv:
        return []
    proc = _run(argv, path)
    from hpcft.rundir.secrets_file import SECRETS_FILE, make_private

    make_private(path / SECRETS_FILE)  # the job's secrets stay its owner's, whoever the directory is shared with
    if proc.returncode == 0:
        return []
    skipped = not_permitted(proc.stderr, path)
    if skipped is None:
        raise _failed(argv, path, proc)
    return skipped
