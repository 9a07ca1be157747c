"""Reading a run's metrics.jsonl (written by the trainers) without importing anything heavy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple


def read_metrics(run_dir: str | Path, type: Optional[str] = None) -> List[dict]:
    """The records of `<run_dir>/metrics.jsonl` (only those of one `type` if given); a torn last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    recs = parse_lines(path.read_text(encoding="utf-8", errors="replace").splitlines())  # torn lines skipped
    return recs if type is None else [r for r in recs if r.get("type") == type]


def read_metrics_since(run_dir: str | Path, offset: int = 0) -> Tuple[List[dict], int]:
    """The records of the complete lines of `<run_dir>/metrics.jsonl` from byte `offset` on, and the offset after the
    last complete line (a line being written is read next time): a watcher reads only what was appended."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return parse_lines(data[:end].decode("utf-8", errors="replace").splitlines()), offset + end


def parse_lines(lines: List[str]) -> List[dict]:
    """The JSON records of `lines`, skipping blank and damaged ones (and anything but an object). With orjson (a
    dependency) line by line: 100,000 lines in about a quarter of json's time; a line orjson refuses goes to json
    (NaN and Infinity, which Python's json writes). Without it, all lines at once as one JSON array (0.7x of line by
    line), line by line only when some line is damaged."""
    lines = [x for x in lines if x.strip()]
    try:
        from orjson import loads
    except ImportError:
        loads = None
        try:
            out = json.loads("[" + ",".join(lines) + "]")
            if len(out) == len(lines) and all(isinstance(r, dict) for r in out):
                return out
        except (json.JSONDecodeError, RecursionError):
            pass
    out = []
    for line in lines:
        try:
            rec = loads(line) if loads is not None else json.loads(line)
        except ValueError:  # orjson's and json's decode errors
            try:
                rec = json.loads(line)
            except ValueError:
                continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_summary(run_dir: str | Path) -> List[dict]:
    """The records `hpcft show` (hpcft.ledger.jobjson.detail_rows) needs, in file order: every evaluation and the
    newest training record. Only those lines are parsed (a long run has 100,000 training lines)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()

    def parse(line: str) -> Optional[dict]:
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return None  # a line being written right now

    evals = [r for r in map(parse, (x for x in lines if '"eval"' in x)) if r and r.get("type") == "eval"]
    last = next((r for r in map(parse, (x for x in reversed(lines) if '"train"' in x))
                 if r and r.get("type") == "train"), None)
    return evals + ([last] if last else [])


def loss_series(records: List[dict]) -> Dict[str, Tuple[List[float], List[float]]]:
    """{"train": (steps, losses), "validation": ..., "test": ...} from metrics records, sorted by step. A resumed run
    appends again the steps it redoes after its checkpoint: the last record of a step wins."""
    points: Dict[str, Dict[float, float]] = {}
    for r in records:
        if r.get("loss") is None or r.get("step") is None:
            continue
        name = "train" if r.get("type") == "train" else r.get("split", r.get("type", "?"))
        points.setdefault(name, {})[float(r["step"])] = float(r["loss"])
    return {name: ([x for x in sorted(p)], [p[x] for x in sorted(p)]) for name, p in points.items()}


def metric_series(records: List[dict], key: str) -> Dict[str, Tuple[List[float], List[float]]]:
    """Like loss_series, for any key of the records: {"train": (steps, values), "validation": ..., "test": ...}."""
    points: Dict[str, Dict[float, float]] = {}
    for r in records:
        v = r.get(key)
        if v is None or r.get("step") is None or r.get("type") not in ("train", "eval"):
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        name = "train" if r.get("type") == "train" else r.get("split", "eval")
        points.setdefault(name, {})[float(r["step"])] = v
    out = {}
    for name, p in points.items():
        steps = sorted(p)
        out[name] = (steps, [p[x] for x in steps])
    return out


# What `hpcft curve` shows for a method besides the loss, most telling first: (key in metrics.jsonl, label). The keys
# are those trl 1.x logs through trainers/_trl_common.py (GRPO: the mean reward over the group's completions; DPO:
# the margin between the implicit rewards of chosen and rejected and how often chosen wins; reward models: pairwise
# accuracy on the batch and the score margin). The loss comes last for these (GRPO's hovers near 0 by design).
METHOD_CURVES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "grpo": (("reward", "mean reward"),),
    "dpo": (("rewards/margins", "reward margin"), ("rewards/accuracies", "reward accuracy")),
    "reward": (("accuracy", "pairwise accuracy"), ("margin", "reward margin")),
}


def curve_panels(records: List[dict], method: Optional[str]
                 ) -> List[Tuple[str, str, Dict[str, Tuple[List[float], List[float]]]]]:
    """[(key, label, {split: (steps, values)})] to plot for a run of `method`: the method's own series (those with
    training points), then the loss with validation and test beside it. Empty when nothing was recorded."""
    out = []
    for key, label in METHOD_CURVES.get(str(method), ()) + (("loss", "loss"),):
        s = metric_series(records, key)
        if s.get("train"):
            out.append((key, label, s))
    return out


def progress(records: List[dict], method: Optional[str] = None) -> Dict[str, object]:
    """Where a run is, from its newest training record: step, epoch, loss, lr, tokens/s (logged by causal-LM
    trainers; for trl's, from the change of its running token count num_tokens over time), time, and the
    method's series of METHOD_CURVES (e.g. reward for GRPO)."""
    train = [r for r in records if r.get("type") == "train" and r.get("step") is not None]
    if not train:
        return {}
    last = train[-1]
    out: Dict[str, object] = {k: last.get(k) for k in ("step", "epoch", "loss", "lr", "time")}
    tps = last.get("tokens_per_s")
    if tps is None and len(train) > 1:
        prev = train[-2]
        try:
            dn = float(last["num_tokens"]) - float(prev["num_tokens"])
            dt = float(last["time"]) - float(prev["time"])
            tps = dn / dt if dt > 0 and dn >= 0 else None
        except (KeyError, TypeError, ValueError):
            tps = None
    out["tokens_per_s"] = tps
    for key, _ in METHOD_CURVES.get(str(method), ()):
        if last.get(key) is not None:
            out[key] = last[key]
    return out
