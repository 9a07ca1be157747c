"""The one `summary.json` every trainer writes at the end of a run (same keys for every method).

Keys:
  method, final_step, total_steps, epochs, steps_this_run, train_time_s, steps_per_s,
  first_train (the first logged train record), final_train (the last one), final_train_loss,
  eval ({split: {metric: value}} of the last evaluation), final_metrics ({"<split>_<metric>": value}, flat),
  final_model, base_model, resumed_from, world_size, deepspeed_stage, param_hashes (sha256 of the trainable
  weights on each rank: equal in a healthy data-parallel run), trainable_params, total_params,
  method_info (what only this method has: LoRA or not, reward functions, sample images ...).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional


def make_summary(*, method: str, final_step: int, total_steps: Optional[int], epochs: Any, steps_this_run: int,
                 train_time_s: float, train_history: List[Dict[str, Any]], evals: Dict[str, Dict[str, float]],
                 final_model: str, base_model: Optional[str], resumed_from: Optional[str], world_size: int,
                 deepspeed_stage: Optional[int], param_hashes: List[str], trainable_params: Optional[int] = None,
                 total_params: Optional[int] = None, method_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    first = train_history[0] if train_history else {}
    last = train_history[-1] if train_history else {}
    return {
        "method": method,
        "final_step": int(final_step),
        "total_steps": total_steps,
        "epochs": epochs,
        "steps_this_run": int(steps_this_run),
        "train_time_s": round(float(train_time_s), 3),
        "steps_per_s": round(steps_this_run / train_time_s, 3) if train_time_s > 0 and steps_this_run else None,
        "first_train": first,
        "final_train": last,
        "final_train_loss": last.get("loss"),
        "eval": evals,
        "final_metrics": {f"{s}_{k}": v for s, r in evals.items() for k, v in r.items()},
        "final_model": str(final_model),
        "base_model": str(base_model) if base_model is not None else None,
        "resumed_from": str(resumed_from) if resumed_from else None,
        "world_size": int(world_size),
        "deepspeed_stage": deepspeed_stage,
        "param_hashes": list(param_hashes),
        "param_hash": param_hashes[0] if param_hashes else None,
        "trainable_params": trainable_params,
        "total_params": total_params,
        "method_info": dict(method_info or {}),
    }


def write_summary(output_dir: Path, summary: Dict[str, Any]) -> Path:
    """summary.json, atomically (temp file + rename)."""
    out = Path(output_dir) / "summary.json"
    tmp = out.with_name("summary.json.tmp")
    from hpcft.train.diskfull import guard

    with guard(tmp):
        tmp.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    os.replace(tmp, out)
    return out
