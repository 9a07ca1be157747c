"""Aliases and tags, set by a version's owner (or an administrator): `hpcft models alias NAME@V ALIAS` points
NAME@ALIAS at version V (created, or moved from the version it named, in one transaction; `asset:NAME@ALIAS` then
resolves to V at submit), `hpcft models tag NAME@V KEY=VALUE` labels a version.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

from hpcft.errors import ConfigError, NotFound
from hpcft.ledger import assets as db
from hpcft.registry.names import alias_version, check_alias, check_name, find, split_ref

TAG_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
TAG_VALUE_MAX = 200


def set_alias(ledger, ref: str, alias: str) -> Tuple[db.ModelAsset, Optional[int]]:
    """Point NAME@ALIAS at the version `ref` names (a published one); (that version, the one it named before)."""
    name, version, _ = split_ref(ref, "NAME@VERSION")
    if version is None:
        raise ConfigError(f"{ref}: name the version the alias points to (NAME@3); see `hpcft models list {name}`")
    alias = check_alias(alias)
    row = find(ledger, ref)
    db.require_owner(row, ledger.caller(), "set aliases of")
    return row, db.set_alias(ledger, row, alias)


def delete_alias(ledger, name: str, alias: str) -> int:
    """Remove NAME@ALIAS (its owner or an administrator); the version it pointed to."""
    name = check_name(name.partition("@")[0], "NAME")
    version = alias_version(ledger, name, check_alias(alias))
    row = find(ledger, f"{name}@{version}", published_only=False)
    db.require_owner(row, ledger.caller(), "remove aliases of")
    gone = db.delete_alias(ledger, name, alias)
    if gone is None:
        raise NotFound(f"model asset {name}@{alias}: no such alias")
    return gone


def parse_tags(pairs: Sequence[str]) -> Dict[str, str]:
    out = {}
    for pair in pairs:
        k, sep, v = str(pair).partition("=")
        if not sep or not TAG_KEY_RE.fullmatch(k) or len(v) > TAG_VALUE_MAX or "\n" in v:
            raise ConfigError(f"{ascii(str(pair)[:60])}: a tag is KEY=VALUE (KEY 1-64 letters, digits, '.', '_' or "
                              f"'-' starting with a letter; VALUE up to {TAG_VALUE_MAX} characters on one line); "
                              "e.g. stage=prod")
        out[k] = v
    return out


def set_tags(ledger, ref: str, pairs: Sequence[str], delete: Sequence[str] = ()) -> db.ModelAsset:
    """Add or change tags (KEY=VALUE) and remove tags (KEY) of a version; the row as written."""
    new = parse_tags(pairs)
    if not new and not delete:
        raise ConfigError("hpcft models tag NAME@V KEY=VALUE ... [--delete KEY]: give a tag to set or to delete")
    name, version, _ = split_ref(ref)
    row = find(ledger, ref, published_only=False)
    if version is None and row.state != db.PUBLISHED:
        raise ConfigError(f"{ref}: name the version (NAME@3)")
    db.require_owner(row, ledger.caller(), "tag")
    if row.state == db.DELETED:
        raise ConfigError(f"model asset {row.ref} is deleted: nothing to tag")
    tags = dict(row.tags or {})
    missing = [k for k in delete if k not in tags]
    if missing:
        raise NotFound(f"model asset {row.ref} has no tag {', '.join(missing)} (its tags: "
                       f"{', '.join(sorted(tags)) or 'none'})")
    for k in delete:
        tags.pop(k)
    tags.update(new)
    db.update_fields(ledger, row.id, tags=tags)
    return db.get(ledger, row.id)


def tags_text(tags: Optional[Dict[str, str]]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((tags or {}).items()))


def alias_list(ledger, name: Optional[str] = None) -> Dict[Tuple[str, int], List[str]]:
    from hpcft.registry.names import aliases_of

    return aliases_of(ledger, name)
