"""Experiment trackers (`training.report_to`): TensorBoard, MLflow and Weights & Biases as sinks of the one metrics
writer (`hpcft.train.metrics.MetricsWriter`), so that every method feeds them exactly the series metrics.jsonl
holds, from rank 0 only, plus the resolved config.

Series: `train/<key>` for every number of a train line (loss, lr, tokens_per_s, peak_mem_mb, epoch, and what a
method adds: grad_norm, rewards/margins ...) and `<split>/<key>` for an eval line (validation/loss,
validation/perplexity, test/accuracy ...), each at the line's optimizer step.

Where they write (inside the run directory unless the tracker's own environment variable says otherwise):
- tensorboard: `<run>/tensorboard/` (`tensorboard --logdir ~/.hpcft/runs` shows every run side by side); a resumed
  run purges the steps it redoes, so the curves read like metrics.jsonl read by hpcft.rundir.metrics_io.
- mlflow: `MLFLOW_TRACKING_URI` when set, else a file store `<run>/mlruns`; experiment `MLFLOW_EXPERIMENT_NAME` or
  the job's project; run name `<job id>-<name>`; params = the flattened config, artifact `config.yaml`; a resumed
  job continues the same MLflow run (its id is kept in `<run>/trackers.json`).
- wandb: offline unless `WANDB_MODE` says otherwise (compute nodes have no network), in `<run>/wandb/`; project
  `WANDB_PROJECT` or the job's project; `wandb sync <run>/wandb/offline-run-*` uploads it from a machine with network.

Imports are lazy: nothing here loads a tracker package unless a job asks for it, and `check_report_to` (run at
submit) only asks whether the package is installed. A tracker that fails while the job runs is switched off with one
warning line in the job log: training never stops for a tracker.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

# tracker name -> (the module that must be importable, how to install it)
KNOWN: Dict[str, Tuple[str, str]] = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install mlflow-skinny"),
    "wandb": ("wandb", "pip install wandb"),
}
IDS_FILE = "trackers.json"  # <run>/trackers.json: the MLflow run id / wandb id a resumed job continues
_SKIP = frozenset({"type", "split", "step", "time", "samples"})
_OPEN: List["Trackers"] = []  # open sets in this process (close_all, at exit)


def check_report_to(values: Sequence[Any]) -> List[str]:
    """`training.report_to` at submit: known tracker names, each installed. ConfigError (one line) otherwise."""
    from hpcft.config.methods import check

    names = [str(v) for v in values]
    shown = "[" + ",".join(names) + "]"
    for n in names:
        check(n in KNOWN, "training.report_to", shown, f"unknown tracker {n!r}",
              "use any of tensorboard, mlflow, wandb, e.g. training.report_to=[tensorboard,mlflow] ([] = none)")
    check(len(set(names)) == len(names), "training.report_to", shown, "names a tracker twice", "name each once")
    for n in names:
        module, how = KNOWN[n]
        check(importlib.util.find_spec(module) is not None, "training.report_to", shown,
              f"{n} is not installed here", f"install it ({how}) or leave it out of training.report_to")
    return names


def series(rec: Dict[str, Any]) -> Optional[Tuple[int, Dict[str, float]]]:
    """(step, {series name: value}) of one metrics.jsonl record; None for lines that are not train/eval figures."""
    kind, step = rec.get("type"), rec.get("step")
    if kind not in ("train", "eval") or step is None:
        return None
    prefix = "train" if kind == "train" else str(rec.get("split") or "eval")
    out: Dict[str, float] = {}
    for k, v in rec.items():
        if k in _SKIP or (kind == "eval" and k == "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"{prefix}/{k}"] = float(v)
    return int(step), out


def _warn(msg: str) -> None:
    print(f"[hpcft] tracker {msg}", file=sys.stderr, flush=True)


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class RunInfo:
    """What every tracker is told about the run."""

    def __init__(self, cfg: Any, out: Path, job_id: Optional[int]):
        from omegaconf import OmegaConf

        self.out = Path(out)
        from hpcft.config.secrets import masked

        # what every tracker gets of the config: secrets (notify.urls, ...) masked, as they leave the owner's hands
        self.config: Dict[str, Any] = masked(cfg)
        self.yaml = OmegaConf.to_yaml(OmegaConf.create(self.config))
        self.job_id = job_id
        name = str(cfg.get("name") or "hpcft")
        self.name = f"{job_id}-{name}" if job_id is not None else name
        self.project = str(cfg.get("project") or "default")
        self.method = str(cfg.method.name) if cfg.get("method") is not None else ""
        self.ids: Dict[str, Dict[str, Any]] = {}
        try:
            self.ids = json.loads((self.out / IDS_FILE).read_text())
        except (OSError, ValueError):
            pass

    def save_ids(self) -> None:
        tmp = self.out / (IDS_FILE + ".tmp")
        tmp.write_text(json.dumps(self.ids, indent=1) + "\n")
        os.replace(tmp, self.out / IDS_FILE)


def _flatten(d: Any, prefix: str = "") -> Dict[str, str]:
    if isinstance(d, dict):
        out: Dict[str, str] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.dumps(d) if isinstance(d, (list, type(None))) else str(d)}


class TensorBoard:
    """torch.utils.tensorboard into <run>/tensorboard/; the writer opens at the first figure, with purge_step = its
    step, so the steps a resumed run redoes replace the old ones."""

    name = "tensorboard"

    def __init__(self, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (fail now, not at the first step)

        self.run = run
        self.writer = None

    def _open(self, step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run.out / "tensorboard"), purge_step=step, flush_secs=5)
        text = "    " + self.run.yaml.replace("\n", "\n    ")  # indented: a code block in TensorBoard's Markdown
        self.writer.add_text("config", text, step)
        return self.writer

    def log(self, step: int, values: Dict[str, float]) -> None:
        w = self.writer or self._open(step)
        for k, v in values.items():
            w.add_scalar(k, v, step)

    def close(self, ok: bool) -> None:
        if self.writer is not None:
            self.writer.close()


_MLFLOW_KEY = re.compile(r"[^\w\-. :/]")


class MLflow:
    """An MLflow run (MlflowClient: no global active run) in MLFLOW_TRACKING_URI or the file store <run>/mlruns."""

    name = "mlflow"

    def __init__(self, run: RunInfo):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run.out / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps file stores opt-in
        from mlflow.tracking import MlflowClient

        self.client = c = MlflowClient(tracking_uri=uri)
        prev = run.ids.get("mlflow") or {}
        self.run_id = None
        if prev.get("tracking_uri") == uri and prev.get("run_id"):
            try:
                c.update_run(prev["run_id"], status="RUNNING")  # a resumed job: the same MLflow run goes on
                self.run_id = prev["run_id"]
            except Exception as e:  # the run was deleted: start a new one
                _warn(f"mlflow: run {prev['run_id']} not found ({_first_line(e)}); starting a new one")
        if self.run_id is None:
            exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or run.project
            tags = {"hpcft.job_id": str(run.job_id), "hpcft.method": run.method, "hpcft.run_dir": str(run.out)}
            self.run_id = c.create_run(self._experiment(exp_name), run_name=run.name, tags=tags).info.run_id
            self._log_config(run)
        run.ids["mlflow"] = {"tracking_uri": uri, "run_id": self.run_id}

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another job of the same store created it a moment ago
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _log_config(self, run: RunInfo) -> None:
        from mlflow.entities import Param

        params = [Param(_MLFLOW_KEY.sub("_", k)[:250], v[:500]) for k, v in _flatten(run.config).items()]
        for i in range(0, len(params), 100):  # log_batch takes at most 100 params
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.client.log_text(self.run_id, run.yaml, "config.yaml")

    def log(self, step: int, values: Dict[str, float]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_MLFLOW_KEY.sub("_", k), v, ts, step)
                                                    for k, v in values.items()])

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


class Wandb:
    """A Weights & Biases run, offline by default, in <run>/wandb/; a resumed job continues the same run id."""

    name = "wandb"

    def __init__(self, run: RunInfo):
        mode = os.environ.get("WANDB_MODE") or "offline"
        os.environ["WANDB_MODE"] = mode
        import wandb

        run_id = (run.ids.get("wandb") or {}).get("id") or uuid.uuid4().hex[:12]
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or run.project, name=run.name, id=run_id,
                              resume="allow", dir=str(run.out), mode=mode, config=run.config,
                              tags=[t for t in (run.method,) if t])
        run.ids["wandb"] = {"id": run_id, "mode": mode}

    def log(self, step: int, values: Dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


FACTORIES = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": Wandb}


class Trackers:
    """The trackers of `training.report_to`, opened on rank 0 by MetricsWriter; `write` takes metrics.jsonl
    records. A tracker that fails to start or to log is switched off with one warning; the others go on."""

    def __init__(self, cfg: Any, out: Path, job_id: Optional[int] = None):
        names = [str(n) for n in (cfg.training.get("report_to") or [])]
        self.active: List[Any] = []
        self.closed = False
        if not names:
            return
        run = RunInfo(cfg, out, job_id)
        for n in names:
            if n not in FACTORIES:
                _warn(f"{n}: unknown, skipped (use tensorboard, mlflow or wandb)")
                continue
            try:
                self.active.append(FACTORIES[n](run))
            except Exception as e:
                _warn(f"{n}: not started, the job goes on without it ({_first_line(e)})")
        if run.ids:
            try:
                run.save_ids()
            except OSError as e:
                _warn(f"ids not saved to {out / IDS_FILE} ({_first_line(e)}); a resumed job starts new tracker runs")
        if self.active:
            print(f"[hpcft] reporting to {', '.join(t.name for t in self.active)}", flush=True)
            _OPEN.append(self)

    def write(self, rec: Dict[str, Any]) -> None:
        s = series(rec)
        if s is None or not s[1]:
            return
        step, values = s
        for t in list(self.active):
            try:
                t.log(step, values)
            except Exception as e:
                _warn(f"{t.name}: switched off after a failed write at step {step} ({_first_line(e)})")
                self.active.remove(t)

    def close(self, ok: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        for t in self.active:
            try:
                t.close(ok)
            except Exception as e:
                _warn(f"{t.name}: close failed ({_first_line(e)})")
        self.active = []
        if self in _OPEN:
            _OPEN.remove(self)


def close_all(ok: bool) -> None:
    """Close every open tracker (the trainer's entry point before it exits, also on failure, and at exit)."""
    for t in list(_OPEN):
        t.close(ok)


atexit.register(close_all, False)
