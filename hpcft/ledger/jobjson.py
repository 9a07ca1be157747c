"""The JSON form of a job, as printed by `hpcft list --json`: a JSON array of job objects, in the order of `--sort`
(newest first by default). `hpcft list --json-schema` prints the same schema as a JSON Schema document.

The schema is stable: `FIELDS` below is its single source of truth (name, JSON type, meaning) and a test pins it.
Fields may be added; a field is never renamed, removed or given another type without raising `SCHEMA_VERSION`,
which every object carries as `schema_version`. The job's full config is not included (`hpcft show JOB --config`).
Times are ISO 8601 strings in UTC with their offset, e.g. "2025-05-01T09:30:00.123456+00:00".
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, Tuple

SCHEMA_VERSION = 1

# (field, JSON type, meaning); "?" = may be null
FIELDS: Tuple[Tuple[str, str, str], ...] = (
    ("schema_version", "integer", f"version of this schema ({SCHEMA_VERSION})"),
    ("id", "integer", "job id"),
    ("name", "string", "job name"),
    ("description", "string", "free text given at submit (may be empty)"),
    ("owner", "string", "user who submitted the job"),
    ("project", "string", "project the job belongs to"),
    ("method", "string", "training method (method.name)"),
    ("state", "string", "queued | running | error | stopped | expired | success"),
    ("state_reason", "string?", "why the job reached its state (e.g. 'stopped by user')"),
    ("executor", "string", "local | slurm"),
    ("resources", "object", "the job's resources section (nodes, gpus_per_node, time, partition ...)"),
    ("resource_spec", "string", "the resources as space-separated key=value tokens (what --resources matches)"),
    ("output_dir", "string", "the run directory (config.yaml, logs/, checkpoints/, final/)"),
    ("slurm_job_id", "string?", "Slurm job id ('123', or '123_4' for an array task)"),
    ("array_job_id", "string?", "Slurm array job id, for a job of a sweep"),
    ("array_task_id", "integer?", "index in the Slurm array"),
    ("pid", "integer?", "local executor: the supervisor's process id"),
    ("attempt", "integer", "attempt number (1, then +1 per resume or retry)"),
    ("parent_id", "integer?", "the job this one starts from (model.path=job:ID) or was cloned from"),
    ("created_at", "datetime", "when the ledger row was created"),
    ("submitted_at", "datetime?", "when it was handed to the executor"),
    ("started_at", "datetime?", "when the current attempt started running"),
    ("finished_at", "datetime?", "when the current attempt ended"),
    ("updated_at", "datetime", "last change of the row"),
    ("uuid", "string?", "the job's unique identity (UUID4, given at submit; in its run directory's job.json); null "
                        "for jobs made before hpcft recorded it"),
)


def _iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # SQLite returns the stored UTC time without its offset
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat()


def job_dict(job: Any) -> Dict[str, Any]:
    """A ledger job as a JSON-ready dict with exactly the FIELDS, in their order."""
    out: Dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    for name, typ, _ in FIELDS[1:]:
        value = getattr(job, name)
        out[name] = _iso(value) if typ.startswith("datetime") else value
    return out


def json_schema() -> Dict[str, Any]:
    """FIELDS as a JSON Schema (draft 2020-12) for the output of `hpcft list --json`."""
    base = {"integer": {"type": "integer"}, "string": {"type": "string"}, "object": {"type": "object"},
            "datetime": {"type": "string", "format": "date-time"}}
    props = {}
    for name, typ, meaning in FIELDS:
        prop = dict(base[typ.rstrip("?")], description=meaning)
        if typ.endswith("?"):
            prop["type"] = [prop["type"], "null"]
        props[name] = prop
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"hpcft list --json (schema_version {SCHEMA_VERSION})",
        "type": "array",
        "items": {"type": "object", "properties": props, "required": [f[0] for f in FIELDS]},
    }


def detail_rows(j, records) -> list:
    """[(label, value)] of `hpcft show` and the web console's job page: the job's row, its model asset, the newest
    training step and each evaluation of its metrics records (hpcft.rundir.metrics_io.read_metrics)."""
    from hpcft.timefmt import elapsed, local_time

    rows = [
        ("id", j.id), ("name", j.name), ("description", j.description or "-"), ("state", j.state),
        ("reason", j.state_reason or "-"), ("owner", j.owner), ("project", j.project), ("method", j.method),
        ("executor", j.executor), ("slurm job", j.slurm_job_id or "-"), ("attempt", j.attempt),
        ("parent job", j.parent_id or "-"), ("resources", j.resource_spec), ("output", j.output_dir),
        ("created", local_time(j.created_at)), ("started", local_time(j.started_at)),
        ("finished", local_time(j.finished_at)), ("elapsed", elapsed(j.started_at, j.finished_at)),
    ]
    if ((j.config or {}).get("model") or {}).get("asset"):  # model.path=asset:NAME (hpcft.registry.use)
        rows.insert(rows.index(("parent job", j.parent_id or "-")) + 1, ("model asset", j.config["model"]["asset"]))
    last_train = next((r for r in reversed(records) if r.get("type") == "train"), None)
    if last_train:
        rows.append(("last step", f"step {last_train.get('step')} loss {last_train.get('loss'):.4f} "
                                  f"lr {last_train.get('lr', 0):.3g}"))
    for r in records:
        if r.get("type") == "eval":
            rows.append((f"{r.get('split')} (epoch {r.get('epoch')})",
                         " ".join(f"{k} {v:.4g}" for k, v in r.items()
                                  if isinstance(v, float) and k not in ("epoch", "step", "time"))))
    return rows
