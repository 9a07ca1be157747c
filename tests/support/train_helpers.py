"""Helpers for tests that call trainers in-process (import from test modules)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from hpcft.train.context import RunContext


@dataclass
class RecordingContext(RunContext):
    """A RunContext that records events instead of writing them to the ledger."""

    events: List[tuple] = field(default_factory=list)

    def event(self, kind, message="", **data):
        self.events.append((kind, message, data))


def ctx_for(out) -> RecordingContext:
    return RecordingContext(output_dir=Path(out))


def job_config(out, *overrides):
    """A composed, validated job config writing into `out`."""
    from omegaconf import open_dict

    import hpcft.jobs.preflight

    cfg = hpcft.jobs.preflight.load(list(overrides))
    with open_dict(cfg):
        cfg.output_dir = str(out)
    return cfg


def metrics_rows(out, kind: Optional[str] = None) -> List[dict]:
    from hpcft.rundir.metrics_io import read_metrics

    return read_metrics(out, kind)


@contextmanager
def torch_threads(n: int):
    """Limit torch's threads inside the block (the machines running the suite have few cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def adapter_and_base_logits(run_dir, ids=((5, 6, 7, 8, 9),)):
    """Logits of the run's final LoRA adapter (reloaded with peft) and of its base model on the same tokens;
    asserts the adapter and its tokenizer were saved."""
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    final = Path(run_dir) / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "tokenizer.json").exists()
    tuned = AutoPeftModelForCausalLM.from_pretrained(final).eval()
    base = AutoModelForCausalLM.from_pretrained(Path(run_dir) / "base").eval()
    x = torch.tensor([list(row) for row in ids])
    with torch.no_grad():
        return tuned(x).logits, base(x).logits
