"""Names and references of model assets: the naming rules (NAME, NAME@VERSION, visibility, `publish.*` at submit),
where the registry is, and the lookups of a version among those the caller may see.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hpcft import paths
from hpcft.errors import ConfigError, NotFound, StateError
from hpcft.ledger import assets as db

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def registry_root() -> Path:
    return Path(os.environ.get("HPCFT_REGISTRY") or paths.home() / "registry").expanduser().resolve()


# ------------------------------------------------------------------------------------------------------ values

def check_name(name: Optional[str], key: str = "--name") -> str:
    n = str(name or "")
    if not NAME_RE.fullmatch(n):
        shown = ascii(n[:40]) + ("..." if len(n) > 40 else "")
        raise ConfigError(f"{key}={shown}: a model asset name is 1-100 letters, digits, '.', '_' or '-', starting "
                          f"with a letter or digit; e.g. {key}=tiny-sft")
    return n


def check_visibility(value: Optional[str], key: str = "--visibility") -> str:
    v = str(value or "project")
    if v not in db.VISIBILITIES:
        raise ConfigError(f"{key}={v}: unknown visibility; use {key}=project (the members of the job's project) or "
                          f"{key}=all (everyone)")
    return v


def default_name(job_name: str) -> str:
    """A job's name as an asset name (publish.auto without publish.name)."""
    n = re.sub(r"[^A-Za-z0-9._-]+", "-", str(job_name)).strip("-._")[:100]
    return n or "model"


ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[vV]?\d+")


def check_alias(alias: Optional[str], key: str = "ALIAS") -> str:
    a = str(alias or "")
    if not ALIAS_RE.fullmatch(a) or VERSION_RE.fullmatch(a):
        raise ConfigError(f"{key}={ascii(a[:40])}: an alias is 1-64 letters, digits, '.', '_' or '-', starting with a "
                          "letter, and not a version (v3); e.g. champion")
    return a


def split_ref(ref: str, key: str = "NAME[@VERSION|@ALIAS]") -> Tuple[str, Optional[int], Optional[str]]:
    """`NAME`, `NAME@3`, `NAME@v3` or `NAME@champion` -> (name, version or None, alias or None)."""
    name, sep, ver = str(ref).partition("@")
    check_name(name, key)
    if not sep:
        return name, None, None
    if VERSION_RE.fullmatch(ver):
        v = int(ver.lstrip("vV"))
        if v >= 1:
            return name, v, None
    if ALIAS_RE.fullmatch(ver):
        return name, None, ver
    raise ConfigError(f"{ref}: after @ comes a version (NAME@3) or an alias (NAME@champion); see `hpcft models list "
                      f"{name}`")


def parse_ref(ref: str, key: str = "NAME[@VERSION]") -> Tuple[str, Optional[int]]:
    """`NAME`, `NAME@3` or `NAME@v3` -> (name, version or None for the newest published); an alias is refused."""
    name, version, alias = split_ref(ref, key)
    if alias is not None:
        raise ConfigError(f"{ref}: name the version here (NAME@3), not an alias; see `hpcft models list {name}`")
    return name, version


def check_publish(cfg) -> None:
    """The `publish` section of a job config, checked at submit (hpcft.jobs.preflight.validate)."""
    pub = cfg.get("publish")
    if pub is None:
        return
    if pub.get("name") is not None:
        check_name(pub.name, "publish.name")
    check_visibility(pub.get("visibility"), "publish.visibility")
    if pub.get("auto") and pub.get("name") is None:
        check_name(default_name(str(cfg.name)), "publish.name")
    if pub.get("description") is not None:
        from hpcft.config.checks import DESCRIPTION_MAX, text

        text("publish.description", pub.description, DESCRIPTION_MAX)


# ------------------------------------------------------------------------------------------------------ lookups

def find(ledger, ref: str, published_only: bool = True) -> db.ModelAsset:
    """The version `ref` names (NAME: the newest published; NAME@ALIAS: the version the alias points to) among those
    the caller may see; NotFound otherwise. With published_only, a version in another state is refused with its
    state and reason."""
    name, version, alias = split_ref(ref)
    caller, sharing = ledger.caller(), ledger.sharing()
    if alias is not None:
        version = alias_version(ledger, name, alias)
    rows = [r for r in db.search(ledger, name=name, version=version) if db.readable(r, caller, sharing)]
    if version is None:
        rows = [r for r in rows if r.state == db.PUBLISHED]
    if not rows:
        what = f"{name}@{version}" if version else f"{name} (no published version)"
        raise NotFound(f"model asset {what}: not in the registry, or you ({caller.name}) may not see it; see "
                       "`hpcft models list`")
    row = rows[0]
    if published_only and row.state != db.PUBLISHED:
        why = f" ({row.state_reason})" if row.state_reason else ""
        hint = {db.PUBLISH_FAILED: f"; `hpcft models republish {row.ref}` retries it",
                db.CORRUPT: f"; `hpcft models show {row.ref} --verify` checks it again once its files are restored, "
                            "or publish it anew"}.get(row.state, "")
        raise StateError(f"model asset {row.ref} is {row.state}{why}{hint}")
    return row


def alias_version(ledger, name: str, alias: str) -> int:
    """The version NAME@ALIAS points to, if the caller may see the alias; NotFound otherwise."""
    caller, sharing = ledger.caller(), ledger.sharing()
    for a in db.aliases(ledger, name):
        if a.alias == alias and db.readable(a, caller, sharing):  # type: ignore[arg-type]
            return int(a.version)
    raise NotFound(f"model asset {name}@{alias}: no such alias, or you ({caller.name}) may not see it; set one with "
                   f"`hpcft models alias {name}@VERSION {alias}`")


def aliases_of(ledger, name: Optional[str] = None) -> Dict[Tuple[str, int], List[str]]:
    """{(name, version): [alias, ...]} of the aliases the caller may see."""
    caller, sharing = ledger.caller(), ledger.sharing()
    out: Dict[Tuple[str, int], List[str]] = {}
    for a in db.aliases(ledger, name):
        if db.readable(a, caller, sharing):  # type: ignore[arg-type]
            out.setdefault((a.name, int(a.version)), []).append(a.alias)
    return out


def visible(ledger, name: Optional[str] = None, include_deleted: bool = False) -> List[db.ModelAsset]:
    caller, sharing = ledger.caller(), ledger.sharing()
    return [r for r in db.search(ledger, name=name) if db.readable(r, caller, sharing)
            and (include_deleted or r.state != db.DELETED)]


def asset_at(ledger, path: Path) -> Optional[db.ModelAsset]:
    """The asset whose version directory holds `path` (a path inside the registry), if the caller may see it."""
    try:
        rel = Path(path).resolve().relative_to(registry_root())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 2 or not re.fullmatch(r"v\d+", parts[1]):
        return None
    rows = [r for r in db.search(ledger, name=parts[0], version=int(parts[1][1:]))
            if db.readable(r, ledger.caller(), ledger.sharing())]
    return rows[0] if rows else None
