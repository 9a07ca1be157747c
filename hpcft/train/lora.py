"""The LoRA adapter config every trainer builds from `method.lora` (rank, alpha, dropout, target modules)."""

from __future__ import annotations

import warnings
from typing import Any, List, Optional


def lora_config(method_cfg: Any, task_type: Optional[str] = None, modules_to_save: Optional[List[str]] = None,
                **extra: Any):
    """peft.LoraConfig from method.lora (None when the method has no LoRA settings)."""
    lo = method_cfg.get("lora") if hasattr(method_cfg, "get") else getattr(method_cfg, "lora", None)
    if lo is None:
        return None
    from peft import LoraConfig

    kwargs = dict(r=int(lo.rank), lora_alpha=float(lo.alpha), lora_dropout=float(lo.dropout),
                  target_modules=list(lo.target_modules), **extra)
    if task_type is not None:
        kwargs["task_type"] = task_type
    if modules_to_save is not None:
        kwargs["modules_to_save"] = modules_to_save
    with warnings.catch_warnings():  # peft's FutureWarnings: noise in every job's log
        warnings.simplefilter("ignore", FutureWarning)
        return LoraConfig(**kwargs)
