"""The numbers a Hydra app's task returned, in its point's run directory (`hydra/launcher=hpcft`).

The node side (hpcft.jobs.hydra_point) writes them to `.hpcft-results.json` when the task returns a number or a
mapping of numbers; `hpcft sweep ID` (hpcft.ledger.sweeps) reads them to compare the points side by side. A file in
the run directory, like metrics.jsonl: no ledger schema change, and the ledger only indexes it.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from pathlib import Path
from typing import Any, Dict, Optional

HYDRA_METHOD = "hydra"  # the ledger's `method` of a Hydra app's point: the worker runs the point, not a trainer
RESULTS_JSON = ".hpcft-results.json"  # {"value": 0.12} or {"loss": 0.12, "val.acc": 0.9}
SINGLE_KEY = "value"  # the key of a task that returns one number


def _number(v: Any) -> Optional[float]:
    """v as a float when it is a real number (bool excluded) or a one-element array or tensor (`.item()`)."""
    if not isinstance(v, numbers.Real) and callable(getattr(v, "item", None)):
        try:
            v = v.item()
        except (ValueError, RuntimeError, TypeError):  # more than one element
            return None
    return None if isinstance(v, bool) or not isinstance(v, numbers.Real) else float(v)


def scalars(value: Any, prefix: str = "") -> Dict[str, Optional[float]]:
    """The numbers in a task's return value: a number -> {"value": x}; a mapping (dict, DictConfig) -> its numeric
    entries, nested mappings flattened with dots ({"val": {"acc": 0.9}} -> {"val.acc": 0.9}); anything else, and
    every entry that is no number (a string, a list), -> nothing. NaN and infinities are kept as None (JSON has no
    spelling for them; such a point ranks last)."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping):
        f = _number(value)
        return {} if f is None or prefix else {SINGLE_KEY: f if math.isfinite(f) else None}
    out: Dict[str, Optional[float]] = {}
    for k, v in value.items():
        if isinstance(v, Mapping):
            out.update(scalars(v, f"{prefix}{k}."))
        elif (f := _number(v)) is not None:
            out[f"{prefix}{k}"] = f if math.isfinite(f) else None
    return out


def save_scalars(run_dir: os.PathLike, value: Any) -> Dict[str, Optional[float]]:
    """Write the numbers of `value` (atomically) and return them; nothing is written when it holds none."""
    found = scalars(value)
    if found:
        out = Path(run_dir)
        tmp = out / (RESULTS_JSON + ".tmp")
        tmp.write_text(json.dumps(found) + "\n")
        tmp.replace(out / RESULTS_JSON)
    return found


def load_scalars(run_dir: Optional[os.PathLike]) -> Dict[str, Optional[float]]:
    """The numbers a finished point returned; {} when it returned none, has not finished, or is no Hydra point."""
    try:
        data = json.loads((Path(run_dir) / RESULTS_JSON).read_text()) if run_dir else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            for k, v in data.items()}
