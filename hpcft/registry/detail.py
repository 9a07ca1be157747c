"""One version as `hpcft models show` and the console show it, written once: the list's columns (`models list`), the
detail rows, the model card's text, the outcome of `--verify`, and which owner's actions (republish, delete) the
version's state and the caller's rights allow (hpcft.ledger.assets.require_owner: the rule the actions themselves
apply)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Tuple

from hpcft.errors import HpcftError
from hpcft.ledger import assets as db
from hpcft.registry import files, labels, names

LIST_HEAD = ("ASSET", "STATE", "KIND", "JOB", "SOURCE", "ALIASES", "TAGS", "OWNER", "PROJECT", "VISIBILITY", "CREATED")
CARD_MAX = 1 << 20  # a card is a page of text; more is not shown


def when(dt) -> str:
    """A time of a version as `models list` and `models show` print it (local, to the minute)."""
    return dt.astimezone().strftime("%Y-%m-%d %H:%M") if dt else "-"


def listing(ledger, name: Optional[str] = None,
            include_deleted: bool = False) -> List[Tuple[db.ModelAsset, Tuple[str, ...]]]:
    """`hpcft models list`: the versions the caller may see, newest first per name, each with its row of LIST_HEAD."""
    rows = names.visible(ledger, name, include_deleted=include_deleted)
    al = labels.alias_list(ledger, name)
    return [(r, (r.ref, r.state, r.kind or "-", str(r.job_id or "-"), r.source,
                 ",".join(al.get((r.name, r.version), [])) or "-", labels.tags_text(r.tags) or "-", r.owner,
                 r.project, r.visibility, when(r.created_at))) for r in rows]


def headline(row: db.ModelAsset) -> str:
    return f"model asset {row.ref}: {row.state}" + (f" ({row.state_reason})" if row.state_reason else "")


def detail_rows(ledger, row: db.ModelAsset) -> List[Tuple[str, str]]:
    """`hpcft models show`'s rows after its headline: (key, value), `lineage` once per hop, newest first."""
    from hpcft.registry import use

    meta = row.meta or {}
    aliases = labels.alias_list(ledger, row.name).get((row.name, row.version), [])
    rows = [("aliases", ", ".join(f"{row.name}@{a}" for a in aliases) or "-"),
            ("tags", labels.tags_text(row.tags) or "-"),
            ("kind", f"{row.kind or '-'} ({meta.get('library', '-')}, {meta.get('task', '-')})"),
            ("from", f"job {row.job_id}, {row.source}" + (f" (step {meta['step']})" if meta.get("step") else "")),
            ("owner", f"{row.owner}, project {row.project}, visibility {row.visibility}"),
            ("published", when(row.published_at)),
            ("path", row.path or "-")]
    if row.kind in ("lora", "diffusers_lora"):
        rows.append(("base", str(use.base_of(row, ledger))))
    if row.description:
        rows.append(("description", row.description))
    if meta.get("files") is not None:
        rows.append(("files", f"{meta['files']} ({files.size_text(meta.get('size_bytes') or 0)}), "
                              f"{files.MANIFEST} sha256 {str(meta.get('manifest_sha256'))[:16]}..."))
    for split, vals in sorted((meta.get("eval") or {}).items()):
        rows.append(("eval", f"{split} at step {meta.get('step')}: "
                             + ", ".join(f"{k} {v:.4f}" for k, v in sorted(vals.items()))))
    if not meta.get("eval") and row.state != db.PUBLISHING:
        rows.append(("eval", meta.get("eval_note") or "none recorded"))
    return rows + [("lineage", str(x)) for x in meta.get("lineage") or []]


def show_text(ledger, row: db.ModelAsset) -> str:
    """What `hpcft models show NAME@V` prints."""
    return "\n".join([headline(row)] + [f"  {k:<11} {v}" for k, v in detail_rows(ledger, row)])


def card_text(row: db.ModelAsset) -> Optional[str]:
    """The version's model card (README.md in its directory), or None when there is none this process can read."""
    if not row.path or row.state == db.DELETED:
        return None
    try:
        with open(Path(row.path) / files.CARD, "rb") as f:
            return f.read(CARD_MAX).decode("utf-8", errors="replace")
    except OSError:
        return None


def verify_outcome(ledger, row: db.ModelAsset) -> str:
    """`hpcft models show --verify`: every file hashed against the manifest (hpcft.registry.verify.reverify marks the
    version corrupt, or published again); the line that says so, or HpcftError with the line of the refusal."""
    from hpcft.registry.verify import reverify

    if row.state not in (db.PUBLISHED, db.CORRUPT):
        raise HpcftError(f"model asset {row.ref} is {row.state}: nothing to verify")
    problems = reverify(ledger, row)
    if problems:
        raise HpcftError(f"model asset {row.ref} is corrupt: {len(problems)} file(s) do not match "
                         f"{files.MANIFEST}: " + "; ".join(problems[:5]))
    return (f"verified: every file of {row.ref} matches {files.MANIFEST}"
            + (" (marked published again)" if row.state == db.CORRUPT else ""))


def may(ledger, row: db.ModelAsset, caller=None) -> Dict[str, bool]:
    """Which actions on the version its state allows and the caller may take: verify (anyone who sees it), republish
    (a publish_failed version) and delete (not while publishing) for its owner or an administrator, by the rule
    hpcft.registry.publish applies (hpcft.ledger.assets.require_owner)."""
    from hpcft.ledger.access import AccessDenied

    try:
        db.require_owner(row, caller or ledger.caller(), "change")
        owner = True
    except AccessDenied:
        owner = False
    return {"verify": row.state in (db.PUBLISHED, db.CORRUPT),
            "republish": owner and row.state == db.PUBLISH_FAILED,
            "delete": owner and row.state not in (db.PUBLISHING, db.DELETED)}
