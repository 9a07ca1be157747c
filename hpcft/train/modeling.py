"""Loading the base model and tokenizer a job trains, the same way for every trainer.

A model described by a config (`model.source=config`) is built once with the job's seed and saved under
`<output_dir>/base`, so that every later step (quantized loading for QLoRA, trl's reference model, resume,
other ranks) loads it from a path like any pretrained model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def load_tokenizer(model_cfg: Any, path: Optional[str] = None):
    """The tokenizer for a model config: the built-in byte tokenizer, or one loaded from a path / hub id."""
    src = model_cfg.get("tokenizer") or path or model_cfg.get("path")
    if src == "bytes":
        from hpcft.train.tokenizer import byte_tokenizer

        tok = byte_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=bool(model_cfg.get("trust_remote_code")))
        if tok.chat_template is None:
            from hpcft.train.tokenizer import CHAT_TEMPLATE

            tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_model_path(model_cfg: Any, output_dir: Path, seed: int = 42, is_main: bool = True) -> str:
    """A path to load the base weights from. Config-built models are materialized under output_dir/base."""
    if model_cfg.source == "pretrained":
        return str(model_cfg.path)
    base = Path(output_dir) / "base"
    if (base / "config.json").exists() or not is_main:
        return str(base)
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = load_tokenizer(model_cfg)
    arch = OmegaConf.to_container(model_cfg.arch, resolve=True) if hasattr(model_cfg.arch, "keys") else dict(model_cfg.arch)
    arch = dict(arch)
    model_type = arch.pop("model_type")
    arch.setdefault("vocab_size", len(tok))
    arch.setdefault("pad_token_id", tok.pad_token_id)
    arch.setdefault("bos_token_id", tok.bos_token_id)
    arch.setdefault("eos_token_id", tok.eos_token_id)
    config = AutoConfig.for_model(model_type, **arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(model_cfg.dtype))
    tmp = base.with_name("base.tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(base)
    return str(base)


def load_causal_lm(model_cfg: Any, path: str, quantization: Any = None, device_map: Any = None):
    """AutoModelForCausalLM from `path`, optionally quantized with bitsandbytes (QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch_dtype(model_cfg.dtype), "trust_remote_code": bool(model_cfg.trust_remote_code)}
    if model_cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=bool(quantization.double_quant),
            bnb_4bit_compute_dtype=torch_dtype(quantization.compute_dtype),
        )
    if device_map is not None:
        kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)
