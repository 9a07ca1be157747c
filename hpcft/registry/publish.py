"""Publishing: a job's final model or checkpoint becomes the next version of a name. The ledger row first
(hpcft.ledger.assets: publishing -> published | publish_failed, with the reason), then the version directory,
built in a hidden staging directory (staged, carded, checksummed, hard-linked to equal files of earlier versions,
protected, fsynced) and renamed into place. Also republish (retry a failed version), delete, and publish.auto.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcft.errors import ConfigError, HpcftError, NotFound, StateError
from hpcft.ledger import assets as db
from hpcft.registry.card import build_meta, model_card
from hpcft.registry.files import (CARD, MANIFEST, Say, copy_tree, fsync_dir, protect, quiet, remove_tree,
                                  sha256_file, size_text, write_manifest)
from hpcft.registry.names import check_name, check_visibility, default_name, find, parse_ref, registry_root
from hpcft.registry.stage import Source, describe, model_files, resolve_source, stage_base, stage_checkpoint
from hpcft.registry.verify import forget_stamps, stamp_published


def publish(ledger, job_id: int, *, name: str, checkpoint: Optional[str] = None, description: Optional[str] = None,
            visibility: str = "project", say: Say = quiet, auto: bool = False) -> db.ModelAsset:
    """publish_or_same, the row alone."""
    return publish_or_same(ledger, job_id, name=name, checkpoint=checkpoint, description=description,
                           visibility=visibility, say=say, auto=auto)[0]


def outcome(row, identical: bool = False) -> str:
    """The one line `hpcft publish` (and the web console) says of a publish; a failed one raises it (exit 1)."""
    from hpcft.errors import HpcftError

    if identical:
        return f"already published as {row.ref} (identical content; no new version, no copy) -> {row.path}"
    if row.state != "published":
        raise HpcftError(f"model asset {row.ref}: publish_failed: {row.state_reason} (the version stays recorded; "
                         f"`hpcft models republish {row.ref}` retries it)")
    meta = row.meta or {}
    return f"published {row.ref} ({meta.get('kind')}, {meta.get('files')} files) -> {row.path}"


def publish_or_same(ledger, job_id: int, *, name: str, checkpoint: Optional[str] = None,
                    description: Optional[str] = None, visibility: str = "project", say: Say = quiet,
                    auto: bool = False) -> Tuple[db.ModelAsset, bool]:
    """Publish a job's final model (or a checkpoint) as the next version of `name`; (row, False). When a published
    version of `name` already holds identical content (source_key), that version and True: no row, no copy.
    Refusals that need no row (bad name or visibility, no such job or checkpoint, no right to publish it, a name
    owned by someone else) raise before anything is recorded; once the row exists, the result is the row:
    published, or publish_failed with the reason (and an event on the job)."""
    from hpcft.ledger.access import authorize
    from hpcft.config.checks import DESCRIPTION_MAX, text

    name = check_name(name)
    visibility = check_visibility(visibility)
    if description is not None:
        description = text("--description", description, DESCRIPTION_MAX)
    job, _ = authorize(ledger, job_id, "share")  # publishing shares the model: the job's owner or an administrator
    src = resolve_source(job, checkpoint)
    caller = ledger.caller()
    owner = db.name_owner(ledger, name)
    if owner is not None and owner != caller.name and not caller.admin:
        raise ConfigError(f"--name {name}: this model asset name belongs to {owner}; choose another name")
    key = source_key(job, src)
    same = identical_version(ledger, name, key, visibility)
    if same is not None:
        say(f"the {src.label} of job {job.id} is identical to {same.ref} (published from job {same.job_id}, "
            f"{same.source}): no new version, no copy")
        _job_event(ledger, job.id, "published", f"the {src.label} is identical to model asset {same.ref}: no new "
                   "version", asset=same.ref, path=same.path, auto=auto, identical=True)
        return same, True
    row = db.create_version(ledger, name=name, owner=caller.name, project=job.project, visibility=visibility,
                            job_id=job.id, source=src.label, method=job.method,
                            description=description if description is not None else (job.description or ""),
                            meta={"source": src.label, "auto": auto, "content_key": key})
    ledger.add_event(job.id, "publish", f"publishing the {src.label} as model asset {row.ref}"
                     + (" (publish.auto)" if auto else ""), asset=row.ref, source=src.label, auto=auto)
    return _materialise(ledger, row, job, src, say, auto), False


def _materialise(ledger, row: db.ModelAsset, job, src: Source, say: Say, auto: bool = False) -> db.ModelAsset:
    root = registry_root()
    final = root / row.name / f"v{row.version}"
    db.update_fields(ledger, row.id, path=str(final))
    say(f"publishing the {src.label} of job {job.id} as {row.ref} -> {final}")
    try:
        meta = _build(ledger, row, job, src, final, say)
        meta["content_key"] = (row.meta or {}).get("content_key") or source_key(job, src)
    except BaseException as e:
        reason = _failure(e, root)
        db.set_state(ledger, row.id, db.PUBLISHING, db.PUBLISH_FAILED, reason)
        _job_event(ledger, job.id, "publish_failed", f"model asset {row.ref}: {reason}", asset=row.ref, reason=reason,
                   auto=auto)
        if not isinstance(e, Exception):
            raise
        return db.get(ledger, row.id)
    db.set_state(ledger, row.id, db.PUBLISHING, db.PUBLISHED, None, meta=meta, kind=meta["kind"],
                 published_at=db.utcnow())
    stamp_published(db.get(ledger, row.id))
    _job_event(ledger, job.id, "published", f"model asset {row.ref} published ({meta['files']} files, "
               f"{size_text(meta['size_bytes'])}) at {final}", asset=row.ref, path=str(final), auto=auto)
    return db.get(ledger, row.id)


def _job_event(ledger, job_id: int, kind: str, message: str, **data: Any) -> None:
    try:
        ledger.add_event(job_id, kind, message, **data)
    except Exception as e:  # the asset row holds the outcome; a job event that cannot be written must not undo it
        print(f"[hpcft] note: could not record the {kind} event on job {job_id}: {e}", flush=True)


def source_key(job, src: Source) -> str:
    """What a publish of this source would hold, as one digest: the sha256 of every model file it copies (name,
    size, content; optimizer state and pickles excluded) and the base an adapter applies to. Equal keys: equal
    content (the same final model or checkpoint published twice, or another job's byte-identical one)."""
    from hpcft.registry.stage import job_base

    h = hashlib.sha256(f"base={job_base(job)}\n".encode())
    for rel, p in model_files(src.path):
        h.update(f"{rel} {p.stat().st_size} {sha256_file(p)}\n".encode())
    return h.hexdigest()


def identical_version(ledger, name: str, key: str, visibility: str) -> Optional[db.ModelAsset]:
    """The newest published version of `name` with this content key and visibility, if any (the same content
    published for other readers is a new version: a version's visibility never changes)."""
    for other in db.search(ledger, name=name, states=[db.PUBLISHED]):
        if (other.meta or {}).get("content_key") == key and other.visibility == visibility:
            return other
    return None


def _build(ledger, row, job, src: Source, final: Path, say: Say) -> Dict[str, Any]:
    """Stage, describe, card, checksum, protect, rename: the version directory appears complete or not at all."""
    name_dir = final.parent
    if not name_dir.is_dir():
        name_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(name_dir, 0o755)
    staging = name_dir / f".v{row.version}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    try:
        if src.label == "final":
            copy_tree(src.path, staging, say, only_safe=True)
        else:
            stage_checkpoint(job, src, staging, say)
        if not any(staging.rglob("*.safetensors")):
            raise ConfigError(f"the {src.label} of job {job.id} holds its weights only as pickles; an asset holds "
                              "safetensors (save with safe_serialization=True)")
        info = describe(staging)
        base = stage_base(ledger, info, job, staging, final, say)
        meta = build_meta(ledger, job, src, row, info, base)
        (staging / CARD).write_text(model_card(row, meta), encoding="utf-8")
        files, size = write_manifest(staging, say)
        meta.update(files=files, size_bytes=size, manifest_sha256=sha256_file(staging / MANIFEST),
                    linked=_link_duplicates(ledger, row, staging))
        protect(staging, row.visibility, _members(ledger, row.project, row.owner))
        from hpcft.train.checkpoint import fsync_tree

        fsync_tree(staging)
        if final.exists():  # what an earlier, failed attempt at this version left
            remove_tree(final)
        os.rename(staging, final)
        fsync_dir(name_dir)
    except BaseException:
        try:
            remove_tree(staging)
        except OSError:
            pass
        raise
    return meta


def _members(ledger, project: str, owner: str) -> List[str]:
    import pwd

    out = []
    for u in ledger.projects().get(project, []):
        try:
            pwd.getpwnam(u)
        except KeyError:
            continue
        if u != owner:
            out.append(u)
    return out


def _link_duplicates(ledger, row, staging: Path) -> int:
    """Files equal (sha256 and size) to a file of an earlier published version of the same name with the same
    visibility become hard links to it: a LoRA's included base, published again with every version, is stored
    once. Returns how many were linked."""
    known: Dict[str, Path] = {}
    for other in db.search(ledger, name=row.name, states=[db.PUBLISHED]):
        if other.id == row.id or other.visibility != row.visibility or not other.path:
            continue
        try:
            lines = (Path(other.path) / MANIFEST).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            digest, _, rel = line.partition("  ")
            known.setdefault(digest, Path(other.path) / rel)
    n = 0
    for line in (staging / MANIFEST).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        old, new = known.get(digest), staging / rel
        if old is None or rel == CARD:
            continue
        try:
            if old.stat().st_size != new.stat().st_size:
                continue
            tmp = new.with_name(new.name + ".link")
            os.link(old, tmp)
            os.replace(tmp, new)
            n += 1
        except OSError:  # another filesystem, no hard links there, no access: keep the copy
            continue
    return n


def _failure(e: BaseException, root: Path) -> str:
    """One line for why a publish failed, with what to do."""
    if isinstance(e, OSError) and e.strerror:
        # a copy that cannot write names both files (source, then destination): the one not written is the second
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)
        where = (e.filename2 if full and e.filename2 else e.filename) or root
        where = re.sub(r"/\.v(\d+)\.tmp-[0-9a-f]{8}(?=/|$)", r"/v\1", str(where))  # the staging copy of vN
        return (f"cannot write {where}: {e.strerror} (the registry is {root}: fix its permissions or mount, or "
                f"set HPCFT_REGISTRY)")
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, HpcftError) else text


def republish(ledger, ref: str, say: Say = quiet) -> db.ModelAsset:
    """Retry a failed version (same number) from its recorded source job and checkpoint."""
    row = find(ledger, ref, published_only=False)
    db.require_owner(row, ledger.caller(), "republish")
    if row.state != db.PUBLISH_FAILED:
        raise StateError(f"model asset {row.ref} is {row.state}: only a publish_failed version can be republished")
    try:
        job = ledger.get(int(row.job_id))
    except (HpcftError, TypeError):
        raise NotFound(f"model asset {row.ref}: its source job {row.job_id} is no longer in the ledger; publish "
                       "another job") from None
    src = resolve_source(job, row.source)
    if not db.set_state(ledger, row.id, db.PUBLISH_FAILED, db.PUBLISHING, None):
        raise StateError(f"model asset {row.ref} changed meanwhile (now {db.get(ledger, row.id).state})")
    _job_event(ledger, job.id, "publish", f"republishing the {src.label} as model asset {row.ref}", asset=row.ref,
               source=src.label)
    return _materialise(ledger, db.get(ledger, row.id), job, src, say)


def delete(ledger, ref: str) -> db.ModelAsset:
    """Delete a version: refused while a queued or running job starts from it, or another asset's LoRA needs it as
    its base. Its directory goes first (renamed away in one step, then removed); the row stays, marked deleted, so
    the version number is never reused."""
    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref}: name the version to delete (NAME@VERSION; see `hpcft models list {name}`)")
    row = find(ledger, ref, published_only=False)
    db.require_owner(row, ledger.caller(), "delete")
    if row.state in (db.PUBLISHING, db.DELETED):
        raise StateError(f"model asset {row.ref} is {row.state}: cannot delete it")
    users = db.live_users(ledger, row.name, row.version)
    if users:
        names = ", ".join(f"job {u['id']} ({u['owner']}, {u['state']})" for u in users)
        raise StateError(f"model asset {row.ref} is in use by {names}; delete it after they end (or stop them)")
    needs = [r.ref for r in db.search(ledger, states=[db.PUBLISHED, db.PUBLISH_FAILED])
             if ((r.meta or {}).get("base") or {}).get("asset") == row.ref]
    if needs:
        raise StateError(f"model asset {row.ref} is the base of {', '.join(needs)}; delete those first")
    d = Path(row.path) if row.path else None
    gone = None
    if d is not None and d.exists():
        gone = d.with_name(f".{d.name}.deleted-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(d, gone)
        except OSError as e:
            raise HpcftError(f"model asset {row.ref}: cannot remove {d}: {e.strerror}; delete it as its owner "
                             f"({row.owner}) or a user who may write {d.parent}") from None
    try:
        if not db.set_state(ledger, row.id, row.state, db.DELETED, f"deleted by {ledger.user}"):
            raise StateError(f"model asset {row.ref} changed meanwhile (now {db.get(ledger, row.id).state})")
    except BaseException:
        if gone is not None:
            os.rename(gone, d)  # the ledger refused: the files come back as they were
        raise
    if gone is not None:
        remove_tree(gone)
    forget_stamps(db.get(ledger, row.id))
    return db.get(ledger, row.id)


def auto_publish(ledger, job_id: int, say: Optional[Say] = None) -> Optional[db.ModelAsset]:
    """`publish.auto=true`: publish a job's final model right after its success is recorded. Never raises and never
    touches the job's state: a failure is an event on the job (and, once a version was taken, a publish_failed
    row)."""
    say = say or (lambda m: print(f"[hpcft] {m}", flush=True))
    try:
        job = ledger.get(job_id)
        pub = (job.config or {}).get("publish") or {}
        if not pub.get("auto"):
            return None
        row = publish(ledger, job_id, name=pub.get("name") or default_name(job.name),
                      description=pub.get("description"), visibility=pub.get("visibility") or "project", say=say,
                      auto=True)
        if row.state == db.PUBLISHED:
            say(f"job {job_id}: published as model asset {row.ref} ({row.path})")
        else:
            say(f"job {job_id}: automatic publish of {row.ref} failed: {row.state_reason}")
        return row
    except Exception as e:
        msg = _failure(e, registry_root())
        _job_event(ledger, job_id, "publish_failed", f"automatic publish failed: {msg}", reason=msg, auto=True)
        say(f"job {job_id}: automatic publish failed: {msg}")
        return None


def auto_publish_pending(ledger, job, start_grace_s: float = 30.0, limit_s: float = 3600.0) -> bool:
    """True while a succeeded job with publish.auto has not yet recorded how its automatic publish ended (`hpcft
    submit --wait` waits for it): up to `start_grace_s` after the success for it to start, up to `limit_s` for it
    to end (a publisher that died leaves its row `publishing`)."""
    if job.state != "success" or not ((job.config or {}).get("publish") or {}).get("auto"):
        return False
    evs = [e for e in ledger.events(job.id) if (e.data or {}).get("auto") and e.attempt == job.attempt]
    if any(e.kind in ("published", "publish_failed") for e in evs):
        return False
    if job.finished_at is None:
        return False
    ended = job.finished_at if job.finished_at.tzinfo else job.finished_at.replace(tzinfo=db.utcnow().tzinfo)
    age = (db.utcnow() - ended).total_seconds()
    return age < (limit_s if any(e.kind == "publish" for e in evs) else start_grace_s)
