"""Sweeps in the ledger, and the side-by-side comparison of their points (`hpcft sweep`).

A sweep (`hpcft submit -m ...`) is named by its first job's id. Every point gets a `sweep` event when it is created
(hpcft.jobs.submit.create_jobs): `{"sweep": ID, "point": k, "points": n, "values": {"lr": "2e-3"}, "label": "lr=2e-3",
"base": "quickstart-tiny-lora"}`; events need no schema change, and `hpcft events JOB` shows them.

The comparison reads each point's run directory (metrics.jsonl, summary.json): its final train loss and its best
validation figure (the lowest validation loss; for reward models the highest validation accuracy), best first.
A Hydra app's sweep (`hydra/launcher=hpcft`) has no such figures: its points are compared by the numbers their
task returned (`.hpcft-results.json`, hpcft.rundir.returned), best first by the first returned key or `--by KEY`.
Nothing here imports torch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from sqlmodel import select

from hpcft.errors import NotFound
from hpcft.rundir.returned import HYDRA_METHOD, SINGLE_KEY, load_scalars

KIND = "sweep"
# method -> (validation metric, True when higher is better); every other method: the lowest validation loss
VALIDATION_METRIC: Dict[str, Tuple[str, bool]] = {"reward": ("accuracy", True)}
OWN_KEYS = ("val", "train_loss")  # what `hpcft sweep --by` may name for hpcft's own sweeps
# words of a returned value's name that mean "higher is better" unless a "lower" word is there too (reward_loss);
# every other value: lower is better
HIGHER_WORDS = frozenset({"acc", "accuracy", "auc", "bleu", "f1", "mrr", "ndcg", "precision", "recall", "reward",
                          "rouge", "score", "win", "winrate", "exact", "throughput", "mfu"})
LOWER_WORDS = frozenset({"loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae", "rmse"})


def record_point(ledger, job_id: int, sweep_id: int, k: int, n: int, point: Dict[str, Any]) -> None:
    ledger.add_event(job_id, KIND, f"point {k + 1} of {n} of sweep {sweep_id}: {point.get('label') or '-'}",
                     sweep=int(sweep_id), point=int(k), points=int(n), **point)


def _sweep_events(ledger, where=None, newest_first: bool = False) -> Iterable[Any]:
    from hpcft.ledger.store import Event

    q = select(Event).where(Event.kind == KIND)
    if where is not None:
        q = q.where(where)
    q = q.order_by(Event.job_id.desc() if newest_first else Event.job_id)  # type: ignore[union-attr]
    with ledger.read() as s:
        return list(s.exec(q).all())


def sweep_of(ledger, job_id: int) -> Optional[Dict[str, Any]]:
    """The `sweep` event data of a job, or None when it is no sweep's point."""
    ev = next((e for e in ledger.events(job_id) if e.kind == KIND), None)
    return dict(ev.data) if ev is not None else None


def members(ledger, sweep_id: int) -> Dict[int, Dict[str, Any]]:
    """{job id: its sweep event data} of the points of sweep `sweep_id` still in the ledger (ids ascending)."""
    from hpcft.ledger.store import Event

    first = sweep_of(ledger, sweep_id)
    n = int(first["points"]) if first else None
    out: Dict[int, Dict[str, Any]] = {}
    # the points' ids follow the first one's (created in one loop); other sweeps' events are skipped
    for ev in _sweep_events(ledger, Event.job_id >= int(sweep_id)):
        if int(ev.data.get("sweep", -1)) == int(sweep_id):
            out[int(ev.job_id)] = dict(ev.data)
            if n is not None and len(out) == n:
                break
    return out


def resolve(ledger, job_or_sweep: int) -> int:
    """The sweep id for a sweep id or any of its points' job ids; HpcftError (one line) when neither."""
    try:
        data = sweep_of(ledger, job_or_sweep)
    except NotFound:
        data = None
    if data is not None:
        return int(data["sweep"])
    if members(ledger, job_or_sweep):  # the first point was deleted: its id still names the sweep
        return int(job_or_sweep)
    raise NotFound(f"sweep {job_or_sweep}: no such sweep (a sweep is named by its first job's id, as `hpcft sweep` "
                     "lists them; submit one with `hpcft submit -m key=a,b`)")


def recent(ledger, limit: int = 20) -> List[Dict[str, Any]]:
    """The newest sweeps: [{"sweep", "name", "points", "jobs"}], newest first."""
    found: Dict[int, Dict[str, Any]] = {}
    for ev in _sweep_events(ledger, newest_first=True):
        sid = int(ev.data.get("sweep", ev.job_id))
        if sid not in found:
            if len(found) >= limit:
                break
            found[sid] = {"sweep": sid, "name": ev.data.get("base", ""), "points": ev.data.get("points"), "jobs": []}
        found[sid]["jobs"].append(int(ev.job_id))
    return list(found.values())


# ------------------------------------------------------------------------------------------------ the comparison

def figures(run_dir: str, method: str) -> Dict[str, Any]:
    """A point's figures from its run directory: last step, final train loss, best validation figure and its step."""
    from hpcft.rundir.metrics_io import loss_series, read_metrics

    recs = read_metrics(run_dir) if run_dir else []
    out: Dict[str, Any] = {"step": None, "train_loss": None, "best": None, "best_step": None}
    train = loss_series(recs).get("train")
    if train and train[0]:
        out["step"], out["train_loss"] = int(train[0][-1]), train[1][-1]
    try:  # a finished run's own word on its final train loss
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
        if summary.get("final_train_loss") is not None:
            out["train_loss"] = float(summary["final_train_loss"])
            out["step"] = int(summary.get("final_step") or out["step"] or 0)
    except (OSError, ValueError, TypeError):
        pass
    metric, higher = VALIDATION_METRIC.get(method, ("loss", False))
    vals = [(float(r[metric]), int(r.get("step") or 0)) for r in recs
            if r.get("type") == "eval" and r.get("split") == "validation" and isinstance(r.get(metric), (int, float))]
    if vals:
        best = (max if higher else min)(vals, key=lambda v: v[0])
        out["best"], out["best_step"] = best
    return out


def higher_is_better(key: str) -> bool:
    """The default direction of a returned value: highest first for accuracies, scores, rewards and the like (by a
    word of its name: `val.acc`, `f1_macro`, `pass@1`), lowest first for everything else (losses, errors, a bare
    returned number, as Hydra's Optuna sweeper minimises by default)."""
    words = re.split(r"[^a-z0-9@]+", key.lower())
    if any(w in LOWER_WORDS for w in words):
        return False
    return any(w in HIGHER_WORDS or w.startswith("pass@") for w in words)


def _visible_rows(ledger, sweep_id: int) -> Tuple[List[Dict[str, Any]], Dict[str, Any], str, int]:
    """(rows, the first point's sweep data, the method, how many points the caller may not see)."""
    from hpcft.ledger.access import allowed, level

    found = members(ledger, sweep_id)
    if not found:
        raise NotFound(f"sweep {sweep_id}: no such sweep; `hpcft sweep` lists the latest")
    caller, sharing = ledger.caller(), ledger.sharing()
    jobs = ledger.search(ids=list(found), sort=["id"])
    visible = [j for j in jobs if allowed(level(j, caller, sharing), "show")]
    rows = []
    for j in visible:
        data = found[int(j.id)]
        rows.append({"id": j.id, "name": j.name, "state": j.state, "values": dict(data.get("values") or {}),
                     "point": data.get("point"), "output_dir": j.output_dir, **figures(j.output_dir, j.method),
                     "results": load_scalars(j.output_dir)})
    method = visible[0].method if visible else ""
    return rows, next(iter(found.values())), method, len(found) - len(visible)


def _ranked(rows: List[Dict[str, Any]], fig, higher: bool) -> None:
    """Sort rows best first by fig(row); rows without the figure last, ties by job id."""
    def rank(r):
        v = fig(r)
        return (1, 0.0, r["id"]) if v is None else (0, -v if higher else v, r["id"])

    rows.sort(key=rank)


def compare(ledger, sweep_id: int, by: Optional[str] = None, higher: Optional[bool] = None) -> Dict[str, Any]:
    """The points of a sweep side by side, best first: {"sweep", "name", "points", "kind" (training | returned),
    "keys", "returned", "metric", "by", "higher_is_better", "rows", "hidden"}. A row: job id, name, state, the swept values, step, final train
    loss, best validation figure, and `results` (what a Hydra app's task returned, hpcft.rundir.returned).

    hpcft's own sweeps rank by the best validation figure (else the final train loss); a Hydra app's sweep
    (`hydra/launcher=hpcft`) by a returned value. `by` names the figure (a returned key; for hpcft's own sweeps
    `train_loss` or `val`), `higher` its direction (default: `higher_is_better`); ConfigError (one line) when
    no point has it."""
    rows, first, method, hidden = _visible_rows(ledger, sweep_id)
    keys: List[str] = []
    returned: List[str] = []
    for r in rows:
        keys += [k for k in r["values"] if k not in keys]
        returned += [k for k in r["results"] if k not in returned]
    kind = "returned" if returned or method == HYDRA_METHOD else "training"
    if kind == "returned":
        metric, fig, up = _by_returned(returned, by, higher)
    else:
        metric, fig, up = _by_figure(rows, method, by, higher)
    _ranked(rows, fig, up)
    return {"sweep": int(sweep_id), "name": first.get("base", ""), "points": first.get("points"), "kind": kind,
            "keys": keys, "returned": returned, "metric": metric, "by": by or metric, "higher_is_better": up,
            "rows": rows, "hidden": hidden}


def _by_returned(returned: List[str], by: Optional[str], higher: Optional[bool]):
    """(metric, figure of a row, higher is better) for a Hydra app's sweep: by `by`, else the first returned key."""
    from hpcft.errors import ConfigError

    if by is not None and returned and by not in returned:
        raise ConfigError(f"--by {by}: no point of this sweep returned {by!r}; it returned: {', '.join(returned)}")
    key = by or (returned[0] if returned else SINGLE_KEY)
    return key, (lambda r: r["results"].get(key)), higher_is_better(key) if higher is None else bool(higher)


def _by_figure(rows: List[Dict[str, Any]], method: str, by: Optional[str], higher: Optional[bool]):
    """(metric, figure of a row, higher is better) for hpcft's own sweeps: the best validation figure when any point
    has one (or `by` is `val`), else the final train loss (or `by` is `train_loss`)."""
    from hpcft.errors import ConfigError

    name, val_higher = VALIDATION_METRIC.get(method, ("loss", False))
    if by not in (None, *OWN_KEYS):
        raise ConfigError(f"--by {by}: this sweep's points are hpcft jobs; rank them by one of: {', '.join(OWN_KEYS)}")
    val = by == "val" or (by is None and any(r["best"] is not None for r in rows))
    up = (val_higher if val else False) if higher is None else bool(higher)
    if val:
        return f"validation {name}", (lambda r: r["best"]), up
    return "train loss", (lambda r: r["train_loss"]), up
