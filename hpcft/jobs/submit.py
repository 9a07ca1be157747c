"""From overrides to queued ledger jobs handed to an executor.

Everything is composed and validated first; only then are rows created and run directories written, so a bad
value anywhere in a sweep creates nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from hpcft.config import compose
from hpcft.config import checks
from hpcft.jobs import preflight
from hpcft.errors import ConfigError
from hpcft import paths
from hpcft.errors import HpcftError, SchedulerError
from hpcft.rundir.files import make_run_dir
from hpcft.rundir.identity import foreign_identity, identity_of, read_identity, write_identity
from hpcft.ledger.record import ledger_fields
from hpcft.states import SUBMIT_FAILED, State


@dataclass
class Plan:
    """What `submit` will do: the validated config of every point and the executor that runs them."""

    configs: List[DictConfig]
    overrides: List[List[str]]
    executor: str
    sweep: List[Dict[str, Any]] = field(default_factory=list)  # per point of a sweep: its values (name_points)


def plan(overrides: Sequence[str], multirun: bool = False) -> Plan:
    from hpcft.jobs.executors import resolve_name
    from hpcft.config.sweep import expand

    points = expand(overrides) if multirun else [list(overrides)]
    if not multirun and len(expand(overrides)) > 1:
        raise HpcftError("these overrides describe a sweep (a=1,2); add -m/--multirun to submit a job array")
    cfgs = [resolve_project(resolve_lineage(preflight.load(p))) for p in points]
    executors = {resolve_name(c.executor) for c in cfgs}
    if len(executors) > 1:
        raise HpcftError("a sweep must run on one executor; do not sweep over `executor`")
    cfgs = [resolve_after(c, next(iter(executors))) for c in cfgs]
    return Plan(cfgs, points, executors.pop(), name_points(cfgs, points) if len(points) > 1 else [])


def text_overrides(**texts) -> List[str]:
    """`key="text"` overrides (Hydra-quoted, stored literally) for the free-text fields typed outside an override
    (`submit --name/--description`, the web console's form); ConfigError for text that is not one line of UTF-8."""
    import json

    out = []
    for key, text in texts.items():
        if text is None:
            continue
        if any("\ud800" <= c <= "\udfff" for c in text):
            raise ConfigError(f"{key}: not valid UTF-8; write {key} in UTF-8")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise ConfigError(f"{key}: contains a newline or another control character; write {key} on one line")
        out.append(f"{key}={json.dumps(text, ensure_ascii=False)}")
    return out


def name_points(cfgs: List[DictConfig], points: List[List[str]]) -> List[Dict[str, Any]]:
    """Name each point of a sweep by its swept values (`quickstart-tiny-lora lr=2e-3`, hpcft.config.sweep.point_name; an
    explicit name keeps it and gets the values too). Returns what create_jobs records of each point."""
    from hpcft.config.sweep import label, point_name, swept_values

    info = []
    for cfg, values in zip(cfgs, swept_values(points), strict=True):
        base = str(cfg.name)
        with open_dict(cfg):
            cfg.name = point_name(base, values, checks.NAME_MAX)
        info.append({"base": base, "values": values, "label": label(values)})
    return info


def resolve_project(cfg: DictConfig) -> DictConfig:
    """Projects are Slurm accounts: `project` left at its default becomes `resources.account` when set, else the
    submitting user's project when the ledger knows exactly one (`hpcft admin sync-projects`)."""
    if str(cfg.get("project") or "default") != "default":
        return cfg
    project = cfg.resources.get("account")
    if not project:
        from hpcft.ledger.store import Ledger

        mine = sorted(Ledger().caller().projects)
        project = mine[0] if len(mine) == 1 else None
    if project:
        with open_dict(cfg):
            cfg.project = str(project)
    return cfg


def resolve_lineage(cfg: DictConfig, ledger=None) -> DictConfig:
    """`model.path=job:ID` -> that job's final model, recorded as the new job's parent (lineage); a LoRA adapter is
    merged into its base when the job starts. `method.reward_model=job:ID` likewise. A parent still queued or
    running is waited for: it joins `after` and the reference is resolved when the job starts
    (hpcft.jobs.chain.start_after_parents); the parent is recorded at once."""
    from hpcft.jobs import chain

    path = cfg.model.get("path")
    if isinstance(path, str) and path.startswith("job:"):
        src = _parent(cfg, path, "model.path", ledger)
        with open_dict(cfg):
            cfg.model.parent_job = src.id
            if src.state == State.success.value or src.id not in cfg.after:
                final = chain.final_model(src, "model.path", path)
                cfg.model.path = str(final)
                cfg.model.source = "pretrained"
                cfg.model.tokenizer = str(final)
            else:
                cfg.model.source = "pretrained"
    elif isinstance(path, str) and path.startswith("asset:"):  # a published model (hpcft.registry.use)
        from hpcft.registry.use import resolve_model_path

        resolve_model_path(cfg)
    rm = cfg.method.get("reward_model")
    if isinstance(rm, str) and rm.startswith("job:"):
        src = _parent(cfg, rm, "method.reward_model", ledger)
        if src.state == State.success.value or src.id not in cfg.after:
            with open_dict(cfg):
                cfg.method.reward_model = str(chain.final_model(src, "method.reward_model", rm))
    return cfg


def _parent(cfg: DictConfig, ref: str, key: str, ledger=None):
    """The job `ref` (job:ID) names, readable by the acting user; a parent still live joins cfg.after (the new job
    waits for it)."""
    from hpcft.jobs import chain
    from hpcft.ledger.store import Ledger
    from hpcft.states import LIVE

    src = chain.readable_parent(ledger or Ledger(), chain.ref_id(ref, key), key, str(cfg.get("access") or "none"),
                                cap=key == "model.path")
    if State(src.state) in LIVE and src.id not in list(cfg.get("after") or []):
        with open_dict(cfg):
            cfg.after = [*list(cfg.get("after") or []), src.id]
    return src


def after_overrides(text: Optional[str]) -> List[str]:
    """`--after 12,13` -> ["after=[12,13]"]; ConfigError (one line) for anything but job ids."""
    if text is None:
        return []
    ids = [t.strip() for t in str(text).split(",") if t.strip()]
    if not ids or not all(t.isdigit() for t in ids):
        raise ConfigError(f"--after {text}: expected job ids separated by commas, e.g. --after 12,13 "
                          "(see `hpcft list`)")
    return [f"after=[{','.join(ids)}]"]


def dependency_of(cfg: DictConfig, ledger=None) -> List[str]:
    """The Slurm job ids of the parents in cfg.after still live (what `--dependency=afterok:` names)."""
    if not cfg.get("after"):
        return []
    from hpcft.ledger.store import Ledger
    from hpcft.states import LIVE

    ledger = ledger or Ledger()
    rows = [ledger.get(int(a)) for a in cfg.after]
    return [str(p.slurm_job_id) for p in rows if State(p.state) in LIVE and p.slurm_job_id]


def resolve_after(cfg: DictConfig, executor: str, ledger=None) -> DictConfig:
    """`after` (--after JOB,...): every parent readable, no more closed than this job, live or succeeded
    (hpcft.jobs.chain.check_after); stored as ledger ids."""
    if not cfg.get("after"):
        return cfg
    from hpcft.jobs import chain
    from hpcft.ledger.store import Ledger

    ids = chain.check_after(ledger or Ledger(), list(cfg.after), str(cfg.get("access") or "none"), executor)
    with open_dict(cfg):
        cfg.after = ids
    return cfg


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "job"


def create_jobs(ledger, p: Plan) -> List[Any]:
    """Queued ledger rows + run directories (job.json, then config.yaml) for every point of a plan, once what the
    submit needs is checked (hpcft.jobs.preflight.check_prerequisites: nothing is created when it fails)."""
    import uuid

    preflight.check_prerequisites(p.configs)
    jobs = []
    from hpcft.ledger.deliver import record_events
    from hpcft.rundir import secrets_file

    for cfg in p.configs:
        fields = ledger_fields(cfg)
        fields["config"], _ = secrets_file.split(fields["config"])  # the ledger never holds a secret value
        job = ledger.create_job(**fields, uuid=str(uuid.uuid4()), executor=p.executor, state=State.queued.value)
        out = run_dir_for(cfg, job)
        prepare_run_dir(ledger, job, out)
        with open_dict(cfg):
            cfg.output_dir = str(out)
        public, secret = secrets_file.split(OmegaConf.to_container(cfg, resolve=True))
        secrets_file.write(out, secret)  # for the owner alone (hpcft.rundir.secrets_file); config.yaml masked
        write_config(OmegaConf.create(public), out)
        job = ledger.update(job.id, output_dir=str(out), config=public)
        said = [("submitted", f"to the {p.executor} executor", {"executor": p.executor})]
        if cfg.get("after"):  # queued behind its parents (hpcft.jobs.chain)
            said.append(("after", f"waits for job(s) {', '.join(map(str, cfg.after))} to end in success",
                         {"after": list(cfg.after)}))
        if cfg.model.get("asset"):  # model.path=asset:NAME (hpcft.registry.use): the lineage, as an event too
            alias = cfg.model.get("asset_alias")
            said.append(("asset", f"starts from model asset {cfg.model.asset} ({cfg.model.path})"
                         + (f", through alias {alias} at submit" if alias else ""),
                         {"asset": str(cfg.model.asset), "path": str(cfg.model.path),
                          **({"alias": str(alias)} if alias else {})}))
        record_events(ledger, job.id, out, said)  # in the run directory's journal too: the record
        if p.sweep:  # point k of the sweep named by its first job's id (`hpcft sweep ID`)
            from hpcft.ledger.sweeps import record_point

            record_point(ledger, job.id, jobs[0].id if jobs else job.id, len(jobs), len(p.configs), p.sweep[len(jobs)])
        jobs.append(job)
    return jobs


def run_dir_for(cfg: DictConfig, job: Any) -> Path:
    """The job's run directory: output_dir when given (checked before the row: no other job's), else
    `<runs root>/<id>-<slug>`, or `<id>-<slug>-<uuid[:8]>` when that already exists and is not this job's (another
    ledger sharing the runs root, or a ledger removed and made again, handed out the same id): never reused."""
    if cfg.output_dir:
        return Path(cfg.output_dir).expanduser().resolve()
    out = (paths.runs_root() / f"{job.id}-{slug(cfg.name)}").expanduser().resolve()
    if out.exists() and (read_identity(out) or {}).get("uuid") != job.uuid:
        out = out.with_name(f"{out.name}-{job.uuid[:8]}")
    return out


def prepare_run_dir(ledger, job: Any, out: Path) -> None:
    """The job's run directory: 0700 with logs/, private until shared (hpcft.rundir.files.make_run_dir), with the
    job's identity (job.json, hpcft.rundir.identity) written first; a job submitted with access ro|rw is shared from
    the start (the files follow the ledger). A directory holding another job's identity is refused."""
    other = foreign_identity(out, job.uuid)
    if other is not None:
        raise ConfigError(f"{out}: already the run directory of job {other.get('job_id')} ({other.get('uuid')}); "
                          "a run directory is never reused by another job: choose another output_dir")
    make_run_dir(out)
    if job.uuid:
        write_identity(out, identity_of(job, ledger.url))
    if job.access != "none":
        from hpcft.ledger.access import share_run_dir

        share_run_dir(ledger, ledger.update(job.id, output_dir=str(out)), job.access)


def write_config(cfg: DictConfig, out: Path) -> Path:
    tmp = out / "config.yaml.tmp"
    tmp.write_text(compose.to_yaml(cfg))
    tmp.replace(out / "config.yaml")
    return out / "config.yaml"


def submit(p: Plan, ledger=None) -> List[Any]:
    """Create the jobs and hand them to the executor. A failed hand-over marks the jobs `error` with why."""
    from hpcft.jobs.executors import get_executor
    from hpcft.ledger.store import Ledger

    ledger = ledger or Ledger()
    get_executor(p.executor)  # an unknown executor fails before any row is created
    return hand_over(ledger, p.executor, create_jobs(ledger, p))


def hand_over(ledger, executor_name: str, jobs: Sequence[Any]) -> List[Any]:
    """Give queued ledger jobs to an executor (several = one Slurm array). A failed hand-over marks them `error`
    with why (cause submit_failed) and raises. Also used by hpcft.jobs.hydra_launch for a Hydra app's sweep points."""
    from hpcft.jobs.executors import get_executor

    from hpcft.jobs.chain import set_dependency

    from hpcft.jobs.executors.slurm import SubmissionUncertain

    try:  # a job with parents still live waits for them (Slurm: --dependency=afterok)
        return get_executor(executor_name).submit(ledger, set_dependency(ledger, jobs))
    except SubmissionUncertain:  # Slurm may hold them: they stay queued until `hpcft sync` adopts or settles them
        raise
    except Exception as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if "error" in x.lower()), lines[0] if lines else repr(e))
        for j in jobs:
            ledger.transition(j.id, State.error, f"submission failed: {why}", cause=SUBMIT_FAILED)
        if isinstance(e, HpcftError):
            raise
        raise SchedulerError(f"submission to {executor_name} failed: {why}") from e
