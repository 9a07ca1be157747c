"""`training.kernels` in a job's process: choose (the rules of `hpcft.config.kernels`, now with the GPUs this process
really sees and the model's real config) and apply Liger's kernels before the model is built.

Liger patches transformers' modeling module of the architecture (`apply_liger_kernel_to_llama(...)` and its
siblings): RMSNorm, SwiGLU (GeGLU for Gemma) and RoPE become Triton kernels, and the causal-LM forward computes
the loss with the fused linear cross-entropy when it is given labels in training mode (no logits returned, none
held). The causal-LM loop then passes the labels to the model and takes its loss (`fused_ce`); evaluation (eval
mode, no labels) still gets logits. The trl methods set their own `use_liger_kernel` (`trl_flag`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Optional

from hpcft.config import kernels as K


def model_type_of(path: str) -> Optional[str]:
    """model_type of the model at `path` (a local directory's config.json, else transformers' AutoConfig)."""
    conf = Path(str(path)) / "config.json"
    if conf.is_file():
        return json.loads(conf.read_text()).get("model_type")
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(path)).model_type
    except Exception:  # unknown here: Liger's own lookup decides (an architecture it lacks is refused below)
        return None


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def choose(cfg: Any, model_type: Optional[str], gpus: Optional[int] = None) -> str:
    """'liger' or 'none' for this process; ConfigError (one line) for training.kernels=liger where it cannot apply."""
    return K.resolve(str(cfg.training.get("kernels", "auto")), str(cfg.method.name),
                     gpu_count() if gpus is None else gpus, model_type, K.liger_installed())


def liger_kwargs(fn, method: str) -> dict[str, bool]:
    """The kernels asked of Liger's `apply_liger_kernel_to_<arch>` (those its signature takes)."""
    wanted = {"rope": True, "rms_norm": True, "swiglu": True, "geglu": True, "cross_entropy": False,
              "fused_linear_cross_entropy": method in K.CAUSAL_LM_METHODS}
    params = inspect.signature(fn).parameters
    return {k: v for k, v in wanted.items() if k in params}


def apply_liger(model_type: str, method: str) -> dict[str, bool]:
    """Patch transformers' `model_type` modeling module with Liger's kernels (call before the model is built);
    returns the kernels asked for."""
    import importlib

    mod = importlib.import_module("liger_kernel.transformers")
    fn = getattr(mod, f"apply_liger_kernel_to_{model_type}", None)
    if fn is None:
        from hpcft.errors import ConfigError

        raise ConfigError(f"training.kernels=liger: the installed liger-kernel has no kernels for model_type "
                          f"{model_type}; use training.kernels=none")
    kwargs = liger_kwargs(fn, method)
    fn(**kwargs)
    return kwargs


def setup(cfg: Any, path: str, log=None, gpus: Optional[int] = None) -> bool:
    """Choose and apply training.kernels for the causal-LM loop, before the model at `path` is built. True when the
    model's forward computes the loss with Liger's fused linear cross-entropy (pass it the labels)."""
    model_type = model_type_of(path)
    if choose(cfg, model_type, gpus) != "liger":
        return False
    if model_type is None:  # no config to read the architecture from: auto stays off, liger asked for is refused
        if str(cfg.training.get("kernels")) == "liger":
            from hpcft.errors import ConfigError

            raise ConfigError(f"training.kernels=liger: cannot read the model_type of {path}; use "
                              "training.kernels=auto|none")
        return False
    applied = apply_liger(model_type, str(cfg.method.name))
    if log is not None:
        log(f"[hpcft] kernels: liger ({', '.join(k for k, v in applied.items() if v)}) for {model_type}")
    return bool(applied.get("fused_linear_cross_entropy"))


def trl_flag(cfg: Any, path: str, gpus: Optional[int] = None) -> bool:
    """use_liger_kernel for a trl method's config (trl applies the layer kernels itself)."""
    return choose(cfg, model_type_of(path), gpus) == "liger"
