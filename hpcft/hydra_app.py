"""A user's own `@hydra.main` application swept through hpcft: `python app.py -m x=1,2,3 hydra/launcher=hpcft`.

The launcher plugin (`hydra_plugins/hpcft_launcher`, a thin shell around `launch` below) turns a Hydra sweep into
ONE Slurm job array through hpcft's Slurm executor and returns at once:
- every point is composed first (Hydra's `load_sweep_config`), and the launcher's settings are checked with hpcft's
  own rules (`hpcft.config.check_job`, `check_resources`, `sbatch_options`): a bad value creates nothing;
- each point gets a ledger row (method `hydra`, executor `slurm`, state queued; its `config` is {"hydra_app":
  {name, overrides, config}}, so that no key of the app reads as an hpcft setting) whose run directory is the
  point's Hydra output directory (`hydra.sweep.dir`/`hydra.sweep.subdir`, pinned at submit time), and a payload there
  (`.hpcft-point.pkl`: the task function, its composed config, Hydra's context and singleton state, pickled with
  cloudpickle the way hydra-submitit-launcher pickles its launcher);
- `hpcft.submit.hand_over` gives the rows to `SlurmExecutor` (one array, `slurm_job_id` `123_0`, ...).
On the node the ordinary worker (`hpcft.worker.run_in_allocation`) sees method `hydra` and runs `point_argv`
instead of the trainer: the same state recording (queued -> running -> success / error, restarts, stop requests,
the time-limit warning), logs in `logs/job.log`. `python -m hpcft.hydra_app PAYLOAD` runs Hydra's `run_job` for
the point and writes the task's return value to `.hpcft-result.pkl` (`load_result`).
`hydra.job.id` of a point is its hpcft job id (known at submit time, the same on both sides).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

HYDRA_METHOD = "hydra"  # the ledger's `method` of a Hydra app's point: the worker runs the point, not a trainer
PAYLOAD = ".hpcft-point.pkl"
RESULT = ".hpcft-result.pkl"

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


def load_result(output_dir: os.PathLike) -> Any:
    """The task function's return value of a finished point (its run directory, `hpcft show` names it)."""
    path = Path(output_dir) / RESULT
    if not path.exists():
        from hpcft.errors import NotFound

        raise NotFound(f"{path}: no result (yet); see `hpcft list` for the point's state")
    import cloudpickle  # noqa: F401  (a result may hold objects pickled by value)

    return pickle.loads(path.read_bytes())


# ------------------------------------------------------------------------------------------------- submit side

def settings(launcher_cfg: Any) -> Any:
    """The launcher's settings (`hydra.launcher.*`) checked with hpcft's rules; ConfigError names the key."""
    from omegaconf import OmegaConf

    from hpcft import config as hconfig
    from hpcft.errors import ConfigError
    from hpcft.slurm.sbatch import sbatch_options
    from hpcft.submit import resolve_project

    s = OmegaConf.create({"name": str(launcher_cfg.name), "description": str(launcher_cfg.description or ""),
                          "project": str(launcher_cfg.project or "default"), "access": str(launcher_cfg.access),
                          "executor": "slurm", "output_dir": None,
                          "resources": OmegaConf.to_container(launcher_cfg.resources, resolve=True)})
    try:
        hconfig.check_job(s)
        hconfig.check_resources(s)
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
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides
    from omegaconf import OmegaConf, open_dict

    from hpcft.errors import ConfigError, SchedulerError
    from hpcft.files import make_run_dir
    from hpcft.jobrecord import resource_spec
    from hpcft.ledger import Ledger
    from hpcft.states import SUBMIT_FAILED, State
    from hpcft.submit import hand_over

    logging.getLogger("alembic").setLevel(logging.WARNING)  # a new ledger's migrations: not for Hydra's log
    s = settings(config.hydra.launcher)
    if not shutil.which("sbatch"):
        raise SchedulerError("hydra/launcher=hpcft submits to Slurm and sbatch is not on PATH here; run it where "
                             "Slurm's commands are (a login node), or drop hydra/launcher=hpcft to run locally")
    # compose every point before anything is created: a bad override or a clash of directories creates nothing
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

    from hpcft.sweep import label, point_name, swept_values
    from hpcft.sweep_ledger import record_point

    # each point named by its swept values (`myapp lr=2e-3`), as hpcft's own sweeps; `hpcft sweep ID` compares them
    values = swept_values([filter_overrides(o) for _, o, _ in points]) if len(points) > 1 else [{}] * len(points)
    ledger = Ledger()
    resources = OmegaConf.to_container(s.resources, resolve=True)
    spec = resource_spec(s.resources)
    state = Singleton.get_state()
    jobs: List[Any] = []
    returns = []
    try:
        for k, (idx, overrides, cfg) in enumerate(points):
            shown = " ".join(filter_overrides(overrides))
            job = ledger.create_job(name=point_name(s.name, values[k]), description=s.description or shown[:2000], project=s.project,
                                    access=s.access, method=HYDRA_METHOD, executor="slurm", state=State.queued.value,
                                    resources=resources, resource_spec=spec)
            jobs.append(job)
            cfg = _with_job(cfg, job.id, idx)
            out = _output_dir(cfg)
            with open_dict(cfg.hydra.sweep):  # pinned: the node composes nothing and resolves no new ${now:}
                cfg.hydra.sweep.dir, cfg.hydra.sweep.subdir = str(out.parent), out.name
            make_run_dir(out)
            if job.access != "none":  # shared from the start: the files follow the ledger
                from hpcft.access import share_run_dir

                share_run_dir(ledger, ledger.update(job.id, output_dir=str(out)), job.access)
            _write_payload(out, task_function=task_function, hydra_context=hydra_context, config=cfg,
                           singleton_state=state)
            # under its own key: an app's keys (publish, notify, model ...) must not read as hpcft's job settings
            record = {"hydra_app": {"name": str(cfg.hydra.job.name), "overrides": overrides,
                                    "config": _task_config(cfg)}}
            jobs[-1] = ledger.update(job.id, output_dir=str(out), config=record)
            ledger.add_event(job.id, "submitted", f"point #{idx} of a Hydra sweep of {cfg.hydra.job.name}: {shown}",
                             executor="slurm", overrides=overrides, app=str(cfg.hydra.job.name))
            if len(points) > 1:
                record_point(ledger, job.id, jobs[0].id, k, len(points),
                             {"base": s.name, "values": values[k], "label": label(values[k])})
            returns.append((idx, overrides, cfg))
    except Exception as e:  # no row is left queued without a Slurm job
        for j in jobs:
            ledger.transition(j.id, State.error, f"not submitted: {e}", cause=SUBMIT_FAILED)
        raise

    submitted = hand_over(ledger, "slurm", jobs)
    results = []
    arrays = sorted({j.array_job_id or j.slurm_job_id for j in submitted})
    log.info(f"hpcft: {len(submitted)} point(s) submitted as Slurm job{'s' if len(arrays) > 1 else ''} "
             f"{', '.join(arrays)}; follow with `hpcft list`, `hpcft logs ID`")
    for job, (idx, overrides, cfg) in zip(submitted, returns, strict=True):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))} -> hpcft job {job.id} (Slurm "
                 f"{job.slurm_job_id}) {job.output_dir}")
        ret = JobReturn(overrides=overrides, working_dir=job.output_dir, task_name=str(cfg.hydra.job.name),
                        status=JobStatus.COMPLETED)
        ret.return_value = SubmittedPoint(job.id, job.slurm_job_id, job.output_dir)
        results.append(ret)
    return results


# ------------------------------------------------------------------------------------------------- node side

def point_argv(output_dir: os.PathLike) -> List[str]:
    """What the worker runs for a Hydra point (in place of the trainer)."""
    return [sys.executable, "-u", "-m", "hpcft.hydra_app", str(Path(output_dir) / PAYLOAD)]


def run_point(payload: Path) -> int:
    """Run one point: Hydra's `run_job` with the composed config, in the point's output directory. 0 when the
    task returned (its value saved by rank 0), 1 when it raised (the traceback goes to the job's log)."""
    import traceback

    outer = pickle.loads(payload.read_bytes())
    for p in reversed(outer["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    data = cloudpickle.loads(outer["blob"])
    Singleton.set_state(data["singleton_state"])
    setup_globals()
    # the time-limit warning (resources.signal_grace) reaches the app as SIGUSR1: ignored unless it handles it
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    ret = run_job(hydra_context=data["hydra_context"], task_function=data["task_function"], config=data["config"],
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status != JobStatus.COMPLETED:
        e = ret._return_value
        traceback.print_exception(type(e), e, e.__traceback__)
        print(f"error: the task raised {type(e).__name__}: {e}", flush=True)
        return 1
    if os.environ.get("RANK", "0") == "0":
        out = payload.parent
        tmp = out / (RESULT + ".tmp")
        try:
            tmp.write_bytes(cloudpickle.dumps(ret.return_value))
            tmp.replace(out / RESULT)
        except Exception as e:  # an unpicklable return value does not fail a task that finished
            print(f"[hpcft] note: the return value was not saved ({type(e).__name__}: {e})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_point(Path(sys.argv[1])))
