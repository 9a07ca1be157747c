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
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if type is None or rec.get("type") == type:
            out.append(rec)
    return out


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
