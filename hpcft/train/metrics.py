"""`metrics.jsonl` writer and the numbers the loop logs (tokens/s, peak memory)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional


class MetricsWriter:
    """Appends one JSON object per line to `<output_dir>/metrics.jsonl` (main rank only; no-op elsewhere).
    Lines are flushed at once so `hpcft logs` / plots can follow a running job. Given the job's `cfg`, the
    experiment trackers of `training.report_to` get every record too (hpcft.train.trackers): one writer, every method."""

    def __init__(self, path: Path, enabled: bool = True, cfg: Any = None, job_id: Optional[int] = None):
        self.path = Path(path)
        self.enabled = enabled
        self._f = None
        self.trackers = None  # training.report_to (hpcft.train.trackers): fed every record written here
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
            training = cfg.get("training") if cfg is not None else None
            if training is not None and training.get("report_to"):
                from hpcft.train.trackers import Trackers

                self.trackers = Trackers(cfg, self.path.parent, job_id)

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        rec = dict(record)
        rec.setdefault("time", time.time())
        from hpcft.train.diskfull import guard

        with guard(self.path):
            self._f.write(json.dumps(rec, sort_keys=False) + "\n")
            self._f.flush()
        if self.trackers is not None:
            self.trackers.write(rec)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None


def peak_mem_mb() -> float:
    """Peak accelerator memory if there is one, else this process's peak resident set size."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**20
    except ImportError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def progress_line(step: int, total: int, loss: float, lr: float, tokens_per_s: float, epoch: float) -> str:
    return (f"step {step}/{total} epoch {epoch:.2f} loss {loss:.4f} lr {lr:.3e} "
            f"tok/s {tokens_per_s:,.0f}")


def flush_std() -> None:
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass
    try:
        os.fsync(sys.stdout.fileno())
    except Exception:
        pass
