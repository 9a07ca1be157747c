"""`training.kernels`: which fused kernels a job trains with. Pure (no torch): submit checks it, the memory estimate
counts it, and the trainer core (`hpcft.train.kernels`) applies it.

    none    PyTorch's own modules (the default on CPU)
    liger   Liger's Triton kernels (`liger-kernel`, the optional extra `kernels`): fused linear cross-entropy (the
            logits over the vocabulary are never materialised: the LM head and the loss run chunk by chunk),
            RMSNorm, SwiGLU and RoPE; refused in one line where they cannot apply
    auto    liger where it can apply (a GPU job, liger-kernel installed, an architecture and a method it covers),
            else none

The trl methods (reward, DPO, GRPO) get Liger through their own `use_liger_kernel` flag: the layer kernels
(trl 1.x computes DPO's and GRPO's per-token log-probs in chunks itself, and refuses Liger's fused cross-entropy
there), so only the causal-LM methods drop the logits from the memory estimate.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

KERNELS = ("auto", "liger", "none")
# the text decoders liger-kernel 0.8.5 patches (liger_kernel.transformers.monkey_patch.MODEL_TYPE_TO_APPLY_LIGER_FN)
LIGER_ARCHS = frozenset((
    "llama", "mistral", "mixtral", "ministral", "qwen2", "qwen3", "qwen3_moe", "gemma", "gemma2", "gemma3_text",
    "phi3", "granite", "olmo2", "olmo3", "glm4", "deepseek_v2", "deepseek_v3", "smollm3", "nemotron", "exaone4",
))
CAUSAL_LM_METHODS = ("pretrain", "full", "lora", "qlora")  # hpcft's own loop: Liger's fused linear cross-entropy
TRL_METHODS = ("reward", "dpo", "grpo")  # trl's `use_liger_kernel`: the layer kernels
LIGER_METHODS = CAUSAL_LM_METHODS + TRL_METHODS


def liger_installed() -> bool:
    try:
        return importlib.util.find_spec("liger_kernel") is not None
    except (ImportError, ValueError):
        return False


def liger_problem(method: str, gpus: int, model_type: Optional[str], installed: bool) -> Optional[str]:
    """Why Liger's kernels cannot apply to this job (None when they can). `model_type` None: not known here
    (checked again where the model's config is read)."""
    if method not in LIGER_METHODS:
        return f"method={method} has no Liger kernels (they cover the language-model methods: " \
               f"{', '.join(LIGER_METHODS)})"
    if gpus <= 0:
        return "Liger's kernels are Triton GPU kernels and this job has no GPU (resources.gpus_per_node=0)"
    if model_type is not None and model_type not in LIGER_ARCHS:
        return f"Liger has no kernels for model_type {model_type} (it covers {', '.join(sorted(LIGER_ARCHS))})"
    if not installed:
        return "liger-kernel is not installed (pip install 'hpcft[kernels]')"
    return None


def resolve(choice: str, method: str, gpus: int, model_type: Optional[str], installed: bool) -> str:
    """'liger' or 'none' for training.kernels=`choice`; ConfigError (one line) when `liger` cannot apply."""
    if choice == "none":
        return "none"
    why = liger_problem(method, gpus, model_type, installed)
    if choice == "liger" and why is not None:
        from hpcft.errors import ConfigError

        raise ConfigError(f"training.kernels=liger: {why}; use training.kernels=auto|none")
    return "liger" if why is None else "none"


def fuses_logits(kernels: str, method: str) -> bool:
    """Liger's fused linear cross-entropy replaces the LM head + loss (no logits over the vocabulary held)."""
    return kernels == "liger" and method in CAUSAL_LM_METHODS
