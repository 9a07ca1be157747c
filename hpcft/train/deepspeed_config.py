"""The DeepSpeed JSON config, generated from `cfg.deepspeed` + `cfg.training` so the two can never disagree."""

from __future__ import annotations

import copy
from typing import Any


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _plain(x: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(x):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:
        pass
    return x


def build_ds_config(ds: Any, training: Any, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for `deepspeed.initialize(config=...)`.

    ds: cfg.deepspeed (stage null means ZeRO stage 0: plain data parallel). training: cfg.training.
    The optimizer is a torch AdamW built by the trainer (DeepSpeed's own optimizers are C++/CUDA extensions
    compiled at first use).
    """
    stage = 0 if ds.get("stage") is None else int(ds.stage)
    micro, accum = int(training.batch_size), int(training.gradient_accumulation)
    precision = str(training.precision)
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": bool(ds.get("overlap_comm", False)),
        "contiguous_gradients": bool(ds.get("contiguous_gradients", True)),
    }
    if stage >= 1 and ds.get("offload_optimizer"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = bool(ds.get("gather_16bit_weights_on_model_save", True))
        if ds.get("offload_params"):
            zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    conf: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * int(world_size),
        "gradient_clipping": float(training.max_grad_norm),
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    extra = _plain(ds.get("extra")) or {}
    return _merge(conf, dict(extra))
