"""The optimizer of hpcft's own loops (causal-LM core, text-to-image): torch AdamW, weight-decay groups, fused.

Fused AdamW updates every parameter in one kernel instead of a dozen `foreach` passes over weights, gradients and
both moments: full fine-tuning of the 10.8M-parameter benchmark model on one CPU core spends 17 ms instead of
59 ms per optimizer step on it (benchmarks/bench_train.py). It is also what transformers' Trainer picks with
torch >= 2.8 (`adamw_torch_fused`), i.e. what hpcft's trl methods and LLaMA-Factory already run. Where the
parameters' devices or dtypes have no fused kernel, the plain AdamW is used. A checkpoint written by the plain
optimizer resumes with it (torch restores each group's options from the checkpoint), so a resumed run takes
exactly the steps it would have taken.
"""

from __future__ import annotations

from typing import Any, Iterable


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: no weight decay on biases and norm weights (1-d tensors)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or n.endswith(".bias") or "norm" in n.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def adamw(params: Iterable, lr: float, weight_decay: float = 0.0):
    """torch.optim.AdamW, fused when every parameter's device and dtype have the fused kernel."""
    import torch

    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # e.g. a device without the fused kernel, or a non-float parameter
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
