"""A user's own `@hydra.main` application swept through hpcft: `python app.py -m x=1,2,3 hydra/launcher=hpcft`.

The launcher plugin (`hydra_plugins/hpcft_launcher`, a thin shell around `launch` below) turns a Hydra sweep into
ONE Slurm job array through hpcft's Slurm executor and returns at once:
- every point is composed first (Hydra's `load_sweep_config`), and the launcher's settings are checked with hpcft's
  own rules (`hpcft.config.checks.check_job`, `check_resources`, `sbatch_options`): a bad value creates nothing;
- each point gets a ledger row (method `hydra`, executor `slurm`, state queued; its `config` is {"hydra_app":
  {name, overrides, config}}, so that no key of the app reads as an hpcft setting) whose run directory is the
  point's Hydra output directory (`hydra.sweep.dir`/`hydra.sweep.subdir`, pinned at submit time), and a payload there
  (`.hpcft-point.pkl`: the task function, its composed config, Hydra's context and singleton state, pickled with
  cloudpickle the way hydra-submitit-launcher pickles its launcher);
- `hpcft.jobs.submit.hand_over` gives the rows to `SlurmExecutor` (one array, `slurm_job_id` `123_0`, ...).
On the node the ordinary worker runs the point (`hpcft.jobs.hydra_point`), which records the numbers the task
returns (hpcft.rundir.returned); `hpcft sweep ID` compares the points by them.
`hydra.job.id` of a point is its hpcft job id (known at submit time, the same on both sides).
"""


from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

from hpcft.jobs.hydra_point import HYDRA_METHOD, PAYLOAD, RESULT

log = logging.getLogger(__name__)


@dataclass
class SubmittedPoint:
    """What `launch` returns as a point's `return_value`: where its results will be (the job has not run yet)."""

    job_id: int
    slurm_job_id: Optional[str]
    output_dir: str

    @property
    def result_file(self) -> Path:
        return Path(self.output_dir) / RESULT


# ------------------------------------------------------------------------------------------------- submit side

def settings(launcher_cfg: Any) -> Any:
    """The launcher's settings (`hydra.launcher.*`) checked with hpcft's rules; ConfigError names the key."""
    from omegaconf import OmegaConf

    from hpcft.config import checks
    from hpcft.errors import ConfigError
    from hpcft.slurm.sbatch import sbatch_options
    from hpcft.jobs.submit import resolve_project

    s = OmegaConf.create({"name": str(launcher_cfg.name), "description": str(launcher_cfg.description or ""),
                          "project": str(launcher_cfg.project or "default"), "access": str(launcher_cfg.access),
                          "executor": "slurm", "output_dir": None,
                          "resources": OmegaConf.to_container(launcher_cfg.resources, resolve=True)})
    try:
        checks.check_job(s)
        checks.check_resources(s)
        sbatch_options(s.resources, job_name=s.name)
    except ConfigError as e:
        raise ConfigError("hydra.launcher." + str(e).replace(" resources.", " hydra.launcher.resources.")) from None
    return resolve_project(s)


def _output_dir(cfg: Any) -> Path:
    from omegaconf import OmegaConf

    sub = OmegaConf.select(cfg, "hydra.sweep.subdir")
    return Path(os.path.abspath(os.path.join(str(OmegaConf.select(cfg, "hydra.sweep.dir")), str(sub or ""))))


def _with_job(cfg: Any, job_id: Any, num: int) -> Any:
    from omegaconf import open_dict

    with open_dict(cfg.hydra.job):
        cfg.hydra.job.id = str(job_id)
        cfg.hydra.job.num = num
    return cfg


def _task_config(cfg: Any) -> dict:
    """The point's config without `hydra`, as the ledger keeps it (resolved when it can be)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    task = copy.deepcopy(cfg)
    with open_dict(task):
        task.pop("hydra", None)
    HydraConfig.instance().set_config(cfg)
    try:
        return OmegaConf.to_container(task, resolve=True)  # type: ignore[return-value]
    except Exception:  # an interpolation only the running job can resolve: keep it as written
        return OmegaConf.to_container(task, resolve=False)  # type: ignore[return-value]


def _write_payload(out: Path, **payload: Any) -> None:
    """The point's payload, private (0600), written atomically. sys.path travels outside the cloudpickle blob: the
    node puts it in place before unpickling functions that refer to the app's own modules."""
    import cloudpickle

    data = pickle.dumps({"sys_path": list(sys.path), "blob": cloudpickle.dumps(payload)})
    tmp = out / (PAYLOAD + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(out / PAYLOAD)


def launch(hydra_context: Any, task_function: Any, config: Any, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> List[Any]:
    """Submit a batch of sweep points as ONE Slurm array (hpcft's Slurm executor) and return at once: one
    JobReturn per point, COMPLETED, whose return_value is a `SubmittedPoint` (the job and where its results go)."""
    from hpcft.errors import SchedulerError
    from hpcft.jobs.submit import hand_over
    from hpcft.ledger.store import Ledger
    from hpcft.states import SUBMIT_FAILED, State

    logging.getLogger("alembic").setLevel(logging.WARNING)  # a new ledger's migrations: not for Hydra's log
    s = settings(config.hydra.launcher)
    if not shutil.which("sbatch"):
        raise SchedulerError("hydra/launcher=hpcft submits to Slurm and sbatch is not on PATH here; run it where "
                             "Slurm's commands are (a login node), or drop hydra/launcher=hpcft to run locally")
    points = _compose_points(hydra_context, config, job_overrides, initial_job_idx)
    ledger = Ledger()
    jobs: List[Any] = []
    try:
        _create_points(ledger, s, points, jobs, hydra_context=hydra_context, task_function=task_function)
    except Exception as e:  # no row is left queued without a Slurm job
        for j in jobs:
            ledger.transition(j.id, State.error, f"not submitted: {e}", cause=SUBMIT_FAILED)
        raise
    return _returns(hand_over(ledger, "slurm", jobs), points)


def _compose_points(hydra_context: Any, config: Any, job_overrides: Sequence[Sequence[str]],
                    initial_job_idx: int) -> List[tuple]:
    """(index, overrides, composed config) of every point, all composed before anything is created: a bad override
    or two points sharing a directory creates nothing."""
    from omegaconf import OmegaConf

    from hpcft.errors import ConfigError

    points = []
    seen: dict = {}
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        out = _output_dir(_with_job(copy.deepcopy(cfg), f"hpcft-{idx}", idx))
        if out in seen:
            raise ConfigError(f"hydra.sweep.subdir={OmegaConf.select(config, 'hydra.sweep.subdir', default='')}: "
                              f"points {seen[out]} and {idx} would share {out}; keep ${{hydra.job.num}} in it")
        seen[out] = idx
        points.append((idx, list(overrides), cfg))
    return points


def _create_points(ledger: Any, s: Any, points: List[tuple], jobs: List[Any], **payload: Any) -> None:
    """A queued ledger row, a run directory (the point's Hydra output directory, pinned) and a payload for every
    point, appended to `jobs` as they are made (so that a failure part-way can settle them all). Each point is
    named by its swept values (`myapp lr=2e-3`), as hpcft's own sweeps are; `hpcft sweep ID` compares them."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from omegaconf import OmegaConf, open_dict

    from hpcft.config.sweep import label, point_name, swept_values
    from hpcft.jobs.submit import prepare_run_dir
    from hpcft.ledger.deliver import record_events
    from hpcft.ledger.record import resource_spec
    from hpcft.ledger.sweeps import record_point
    from hpcft.states import State

    from hpcft.jobs.preflight import check_acl_tools

    check_acl_tools(str(s.access or "none"))  # before the first row, as a submit checks (hpcft.jobs.preflight)
    values = swept_values([filter_overrides(o) for _, o, _ in points]) if len(points) > 1 else [{}] * len(points)
    resources = OmegaConf.to_container(s.resources, resolve=True)
    spec, state = resource_spec(s.resources), Singleton.get_state()
    for k, (idx, overrides, cfg) in enumerate(points):
        shown = " ".join(filter_overrides(overrides))
        job = ledger.create_job(name=point_name(s.name, values[k]), description=s.description or shown[:2000],
                                project=s.project, access=s.access, method=HYDRA_METHOD, executor="slurm",
                                state=State.queued.value, resources=resources, resource_spec=spec)
        jobs.append(job)
        cfg = _with_job(cfg, job.id, idx)
        out = _output_dir(cfg)
        with open_dict(cfg.hydra.sweep):  # pinned: the node composes nothing and resolves no new ${now:}
            cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir = str(out.parent), out.name
        prepare_run_dir(ledger, job, out)
        _write_payload(out, config=cfg, singleton_state=state, **payload)
        # under its own key: an app's keys (publish, notify, model ...) must not read as hpcft's job settings
        record = {"hydra_app": {"name": str(cfg.hydra.job.name), "overrides": overrides,
                                "config": _task_config(cfg)}}
        jobs[-1] = ledger.update(job.id, output_dir=str(out), config=record)
        record_events(ledger, job.id, out, [("submitted", f"point #{idx} of a Hydra sweep of {cfg.hydra.job.name}: "
                                             f"{shown}", {"executor": "slurm", "overrides": overrides,
                                                          "app": str(cfg.hydra.job.name)})])
        if len(points) > 1:
            record_point(ledger, job.id, jobs[0].id, k, len(points),
                         {"base": s.name, "values": values[k], "label": label(values[k])})
        points[k] = (idx, overrides, cfg)


def _returns(submitted: List[Any], points: List[tuple]) -> List[Any]:
    """One COMPLETED JobReturn per submitted point, logged as Hydra's own launchers log theirs."""
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides

    arrays = sorted({j.array_job_id or j.slurm_job_id for j in submitted})
    log.info(f"hpcft: {len(submitted)} point(s) submitted as Slurm job{'s' if len(arrays) > 1 else ''} "
             f"{', '.join(arrays)}; follow with `hpcft list`, `hpcft logs ID`")
    results = []
    for job, (idx, overrides, cfg) in zip(submitted, points, strict=True):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} -> hpcft job {job.id} (Slurm "
                 f"{job.slurm_job_id}) {job.output_dir}")
        ret = JobReturn(overrides=overrides, working_dir=job.output_dir, task_name=str(cfg.hydra.job.name),
                        status=JobStatus.COMPLETED)
        ret.return_value = SubmittedPoint(job.id, job.slurm_job_id, job.output_dir)
        results.append(ret)
    return results
