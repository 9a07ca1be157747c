"""The model registry's ledger table: one row per published model version (`model_assets`), with its own small state
machine, applied atomically like the jobs' (hpcft.states + Ledger.transition):

    publishing -> published | publish_failed      publish_failed -> publishing (republish) | deleted
    published -> deleted | corrupt                corrupt -> published (verified again) | deleted

`corrupt`: a job starting from the version found its files differ from its SHA256SUMS (hpcft.registry.verify).
A version carries tags (`tags`, KEY=VALUE), and a name carries aliases (`model_aliases`: NAME@ALIAS -> a version of
NAME, moved in one UPDATE; `asset:NAME@ALIAS` resolves through it).

A version number is taken once and never reused (a deleted version keeps its row, so `asset:NAME@3` in an old job's
lineage never names another model). A name belongs to the user who first published it (administrators may publish
to any name). Who may see a row: its owner, administrators, and while sharing is on everyone (`visibility=all`) or
the members of its project (`visibility=project`); on PostgreSQL the database enforces the same rules (row-level
security and a guard trigger created by `hpcft admin init`, hpcft.ledger.team). Torch-free.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence

from sqlalchemy import JSON, Column, Text, UniqueConstraint, func, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from hpcft.errors import ConfigError, HpcftError, NotFound, StateError
from hpcft.ledger.rows import update_row, utcnow

PUBLISHING, PUBLISHED, PUBLISH_FAILED, DELETED = "publishing", "published", "publish_failed", "deleted"
CORRUPT = "corrupt"
STATES = (PUBLISHING, PUBLISHED, PUBLISH_FAILED, CORRUPT, DELETED)
TRANSITIONS = {
    PUBLISHING: {PUBLISHED, PUBLISH_FAILED},
    PUBLISH_FAILED: {PUBLISHING, DELETED},
    PUBLISHED: {DELETED, CORRUPT},
    CORRUPT: {PUBLISHED, DELETED},
    DELETED: set(),
}
VISIBILITIES = ("project", "all")
REASON_MAX = 2000


class ModelAsset(SQLModel, table=True):
    """One version of a published model: files under `path` (the registry), a model card, a checksum manifest."""

    __tablename__ = "model_assets"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_assets_name_version"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    state: str = Field(default=PUBLISHING, index=True)
    state_reason: Optional[str] = Field(default=None, sa_type=Text)
    owner: str = Field(index=True)  # who published it
    project: str = Field(default="default", index=True)  # the source job's project
    visibility: str = "project"  # project | all
    job_id: Optional[int] = Field(default=None, index=True)  # the job it was published from
    source: str = "final"  # final | step-00000040 (a checkpoint)
    kind: str = ""  # lora (a peft adapter) | model (full Hugging Face weights) | diffusers_lora
    method: str = ""
    description: str = Field(default="", sa_type=Text)
    path: str = ""  # the version's directory in the registry (set when the copy starts)
    meta: Dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # base, lineage, metrics, files
    tags: Dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))  # KEY=VALUE (`hpcft models tag`)
    created_at: datetime = Field(default_factory=utcnow)
    published_at: Optional[datetime] = None
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class ModelAlias(SQLModel, table=True):
    """NAME@ALIAS -> one version of NAME (`hpcft models alias`); owned, seen and shared like that version."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("name", "alias", name="uq_model_aliases_name_alias"),)

    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    alias: str
    version: int
    owner: str = Field(index=True)  # the owner of the version it points to
    project: str = "default"
    visibility: str = "project"
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


# ------------------------------------------------------------------------------------------------------- access

def readable(asset: ModelAsset, caller, sharing: bool = True) -> bool:
    """The owner, administrators; with sharing on, everyone (visibility all) or the project's members (project)."""
    if asset.owner == caller.name or caller.admin:
        return True
    if not sharing:
        return False
    return asset.visibility == "all" or (asset.visibility == "project" and asset.project in caller.projects)


def require_owner(asset: ModelAsset, caller, action: str) -> None:
    from hpcft.ledger.access import AccessDenied

    if asset.owner != caller.name and not caller.admin:
        raise AccessDenied(f"model asset {asset.ref} (owner {asset.owner}): you ({caller.name}) may use it but not "
                           f"{action} it; ask its owner or an administrator")


# ------------------------------------------------------------------------------------------------------- rows

def _is_pg(ledger) -> bool:
    return ledger.url.startswith(("postgresql", "postgres"))


def name_owner(ledger, name: str) -> Optional[str]:
    """Who owns a name (the publisher of its first version), as far as the caller can see; None when unused."""
    with ledger.read() as s:
        row = s.exec(select(ModelAsset).where(ModelAsset.name == name).order_by(ModelAsset.version)).first()  # type: ignore[arg-type]
    return row.owner if row is not None else None


def create_version(ledger, *, name: str, owner: str, **fields: Any) -> ModelAsset:
    """A new row in state `publishing` with the next version of `name` (1 for a new name). Two publishers racing
    for the same version: the unique (name, version) constraint lets one win; the other takes the next number."""
    for _ in range(20):
        def fn(s: Session) -> ModelAsset:
            top = s.exec(select(func.max(ModelAsset.version)).where(ModelAsset.name == name)).one()
            row = ModelAsset(name=name, owner=owner, version=int(top or 0) + 1, state=PUBLISHING, **fields)
            s.add(row)
            s.flush()
            return row

        try:
            return ledger.write(fn)
        except IntegrityError:
            continue  # the version was just taken: read the maximum again
        except DBAPIError as e:
            msg = str(getattr(e, "orig", e)).strip().splitlines()[0]
            if "belongs to" in msg:  # the PostgreSQL guard trigger (a name owned by a user you cannot see)
                raise ConfigError(f"--name {name}: {msg}; choose another name") from None
            raise
    raise HpcftError(f"model asset {name}: could not take a new version number (too many concurrent publishes); "
                     "try again")


def get(ledger, asset_id: int) -> ModelAsset:
    with ledger.read() as s:
        row = s.get(ModelAsset, int(asset_id))
    if row is None:
        raise NotFound(f"model asset #{asset_id}: not in the ledger")
    return row


def search(ledger, name: Optional[str] = None, version: Optional[int] = None,
           states: Optional[Sequence[str]] = None) -> List[ModelAsset]:
    """Rows matching (all rows the database shows; callers filter with `readable`), newest first."""
    q = select(ModelAsset)
    if name is not None:
        q = q.where(ModelAsset.name == name)
    if version is not None:
        q = q.where(ModelAsset.version == int(version))
    if states:
        q = q.where(ModelAsset.state.in_(list(states)))  # type: ignore[attr-defined]
    q = q.order_by(ModelAsset.name, ModelAsset.version.desc())  # type: ignore[attr-defined]
    with ledger.read() as s:
        return list(s.exec(q).all())


def set_state(ledger, asset_id: int, expected: str, to: str, reason: Optional[str] = None, **fields: Any) -> bool:
    """Move a row from `expected` to `to` in ONE compare-and-set UPDATE (any SQL database); False when another
    process moved it first. A transition the state machine does not allow raises StateError."""
    if to not in TRANSITIONS.get(expected, set()):
        raise StateError(f"model asset #{asset_id}: cannot go from {expected} to {to}")
    values: Dict[str, Any] = dict(fields, state=to, state_reason=(reason or None) and str(reason)[:REASON_MAX],
                                  updated_at=utcnow())

    def fn(s: Session) -> bool:
        stmt = (update(ModelAsset)
                .where(ModelAsset.id == int(asset_id), ModelAsset.state == expected)  # type: ignore[arg-type]
                .values(**values)
                .execution_options(synchronize_session=False))
        return s.exec(stmt).rowcount == 1  # type: ignore[attr-defined]

    try:
        return ledger.write(fn)
    except DBAPIError as e:  # the PostgreSQL guard trigger (e.g. deleting a version a live job uses)
        msg = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise HpcftError(msg) from None


def update_fields(ledger, asset_id: int, **fields: Any) -> None:
    update_row(ledger, ModelAsset, asset_id, f"model asset #{asset_id}", fields)


def live_users(ledger, name: str, version: int) -> List[Dict[str, Any]]:
    """The queued or running jobs that start from this version (their config's model.asset), whoever owns them: on
    PostgreSQL through the SECURITY DEFINER function `hpcft_asset_users` (row-level security would hide other users'
    jobs), elsewhere from the ledger directly."""
    ref = f"{name}@{int(version)}"
    if _is_pg(ledger):
        from sqlalchemy import text

        try:
            with ledger._reader.connect() as c:
                rows = c.execute(text("SELECT job_id, owner, state FROM hpcft_asset_users(:r)"), {"r": ref}).all()
            return [{"id": int(r[0]), "owner": r[1], "state": r[2]} for r in rows]
        except DBAPIError:  # `hpcft admin init` has not created the function yet: what this role can see
            pass
    out = []
    for job in ledger.live_jobs():
        if ((job.config or {}).get("model") or {}).get("asset") == ref:
            out.append({"id": job.id, "owner": job.owner, "state": job.state})
    return out


def mark_corrupt(ledger, asset_id: int, reason: str) -> bool:
    """published -> corrupt, by whoever found it (a job's submitter need not own the version): on PostgreSQL through
    the SECURITY DEFINER function `hpcft_asset_mark_corrupt` (row-level security lets only the owner update a row),
    elsewhere a plain compare-and-set. False when the row was not published (already marked, deleted)."""
    if _is_pg(ledger):
        from sqlalchemy import text

        try:
            with ledger._writer.begin() as c:
                return bool(c.execute(text("SELECT hpcft_asset_mark_corrupt(:i, :r)"),
                                      {"i": int(asset_id), "r": str(reason)[:REASON_MAX]}).scalar())
        except DBAPIError:  # `hpcft admin init` has not created the function: as this role may
            pass
    try:
        return set_state(ledger, asset_id, PUBLISHED, CORRUPT, reason)
    except HpcftError:
        return False


# ------------------------------------------------------------------------------------------------------- aliases

def aliases(ledger, name: Optional[str] = None) -> List[ModelAlias]:
    """Alias rows (all the database shows), by name then alias."""
    q = select(ModelAlias)
    if name is not None:
        q = q.where(ModelAlias.name == name)
    q = q.order_by(ModelAlias.name, ModelAlias.alias)  # type: ignore[arg-type]
    with ledger.read() as s:
        return list(s.exec(q).all())


def set_alias(ledger, target: ModelAsset, alias: str) -> Optional[int]:
    """Point NAME@ALIAS at `target` (create or move, one transaction); the version it pointed to before, if any."""
    def fn(s: Session) -> Optional[int]:
        row = s.exec(select(ModelAlias).where(ModelAlias.name == target.name,  # type: ignore[arg-type]
                                              ModelAlias.alias == alias)).first()
        before = row.version if row is not None else None
        row = row or ModelAlias(name=target.name, alias=alias, version=target.version, owner=target.owner)
        row.version, row.owner, row.project, row.visibility = target.version, target.owner, target.project, \
            target.visibility
        row.updated_at = utcnow()
        s.add(row)
        s.flush()
        return before

    try:
        return ledger.write(fn)
    except DBAPIError as e:  # the PostgreSQL policies and guard trigger
        msg = str(getattr(e, "orig", e)).strip().splitlines()[0]
        raise HpcftError(f"alias {target.name}@{alias}: {msg}") from None


def delete_alias(ledger, name: str, alias: str) -> Optional[int]:
    """Remove NAME@ALIAS; the version it pointed to (None: there was no such alias)."""
    def fn(s: Session) -> Optional[int]:
        row = s.exec(select(ModelAlias).where(ModelAlias.name == name,  # type: ignore[arg-type]
                                              ModelAlias.alias == alias)).first()
        if row is None:
            return None
        s.delete(row)
        return row.version

    return ledger.write(fn)
