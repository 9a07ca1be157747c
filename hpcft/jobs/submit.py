"""From overrides to queued ledger jobs handed to an executor.

Everything is composed and validated first; only then are rows created and run directories written, so a bad
value anywhere in a sweep creates nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

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
    return Plan(cfgs, points, executors.pop(), name_points(cfgs, points) if len(points) > 1 else [])


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


def _job_final(ref: str, key: str, access: str = "none") -> tuple:
    """(job id, its final model dir) for `job:ID`; ConfigError unless that job succeeded with a final model, the
    acting user may read it, and the new job's `access` is no more open than that job's (hpcft.ledger.access)."""
    from hpcft.ledger.access import authorize, cap_to_parent
    from hpcft.ledger.store import Ledger

    try:
        job_id = int(ref[4:])
    except ValueError:
        raise ConfigError(f"{key}={ref}: expected job:ID with a numeric id, e.g. {key}=job:12") from None
    src, _ = authorize(Ledger(), job_id, "clone")  # building on a job needs read access to it
    final = Path(src.output_dir) / "final"
    if src.state != State.success.value or not final.is_dir():
        raise ConfigError(f"{key}={ref}: job {job_id} has no final model (state {src.state}); "
                                  "use a job that ended in success")
    if key == "model.path":
        cap_to_parent(access, src.access, job_id)
    return job_id, final


def resolve_lineage(cfg: DictConfig) -> DictConfig:
    """`model.path=job:ID` -> that job's final model, recorded as the new job's parent (lineage); a LoRA adapter is
    merged into its base when the job starts. `method.reward_model=job:ID` likewise."""
    path = cfg.model.get("path")
    if isinstance(path, str) and path.startswith("job:"):
        job_id, final = _job_final(path, "model.path", str(cfg.get("access") or "none"))
        with open_dict(cfg):
            cfg.model.path = str(final)
            cfg.model.source = "pretrained"
            cfg.model.tokenizer = str(final)
            cfg.model.parent_job = job_id
    elif isinstance(path, str) and path.startswith("asset:"):  # a published model (hpcft.registry.use)
        from hpcft.registry.use import resolve_model_path

        resolve_model_path(cfg)
    rm = cfg.method.get("reward_model")
    if isinstance(rm, str) and rm.startswith("job:"):
        with open_dict(cfg):
            cfg.method.reward_model = str(_job_final(rm, "method.reward_model")[1])
    return cfg


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[:60] or "job"


def create_jobs(ledger, p: Plan) -> List[Any]:
    """Queued ledger rows + run directories (job.json, then config.yaml) for every point of a plan, once what the
    submit needs is checked (hpcft.jobs.preflight.check_prerequisites: nothing is created when it fails)."""
    import uuid

    preflight.check_prerequisites(p.configs)
    jobs = []
    for cfg in p.configs:
        job = ledger.create_job(**ledger_fields(cfg), uuid=str(uuid.uuid4()), executor=p.executor,
                                state=State.queued.value)
        out = run_dir_for(cfg, job)
        prepare_run_dir(ledger, job, out)
        with open_dict(cfg):
            cfg.output_dir = str(out)
        write_config(cfg, out)
        job = ledger.update(job.id, output_dir=str(out), config=OmegaConf.to_container(cfg, resolve=True))
        ledger.add_event(job.id, "submitted", f"to the {p.executor} executor", executor=p.executor)
        if p.sweep:  # point k of the sweep named by its first job's id (`hpcft sweep ID`)
            from hpcft.ledger.sweeps import record_point

            record_point(ledger, job.id, jobs[0].id if jobs else job.id, len(jobs), len(p.configs), p.sweep[len(jobs)])
        if cfg.model.get("asset"):  # model.path=asset:NAME (hpcft.registry.use): the lineage, as an event too
            ledger.add_event(job.id, "asset", f"starts from model asset {cfg.model.asset} ({cfg.model.path})",
                             asset=str(cfg.model.asset), path=str(cfg.model.path))
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

    try:
        return get_executor(executor_name).submit(ledger, jobs)
    except Exception as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if "error" in x.lower()), lines[0] if lines else repr(e))
        for j in jobs:
            ledger.transition(j.id, State.error, f"submission failed: {why}", cause=SUBMIT_FAILED)
        if isinstance(e, HpcftError):
            raise
        raise SchedulerError(f"submission to {executor_name} failed: {why}") from e
