"""Loading the base model and tokenizer a job trains, the same way for every trainer.

A model described by a config (`model.source=config`) is built once with the job's seed and saved under
`<output_dir>/base`, so that every later step (quantized loading for QLoRA, trl's reference model, resume,
other ranks) loads it from a path like any pretrained model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

REMOTE_CODE_BY = "HPCFT_REMOTE_CODE_BY"  # set by `hpcft render`: who enabled model.trust_remote_code


def acting_user() -> str:
    """Who runs this process, as the ledger names them (hpcft.ledger.store.Ledger.user)."""
    try:
        from hpcft.ledger.store import Ledger

        return Ledger().user
    except Exception:  # no ledger reachable: the login name (what SQLite would use)
        import getpass

        return os.environ.get("HPCFT_USER") or getpass.getuser()


def trust_remote_code(model_cfg: Any) -> bool:
    """model.trust_remote_code, refused (ConfigError) when the user who enabled it is not the one running it."""
    if not model_cfg.get("trust_remote_code"):
        return False
    by = os.environ.get(REMOTE_CODE_BY)
    if by and by != acting_user():
        from hpcft.errors import ConfigError

        raise ConfigError(f"model.trust_remote_code=true was enabled by {by}; refusing to run the model's code as "
                          f"{acting_user()} (only {by} may run this job)")
    return True


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

        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code(model_cfg))
        if tok.chat_template is None:
            from hpcft.train.tokenizer import CHAT_TEMPLATE

            tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def base_model_path(model_cfg: Any, output_dir: Path, seed: int = 42, is_main: bool = True) -> str:
    """A path to load the base weights from. Config-built models are materialized under output_dir/base, and so
    is the merged model when the path is a causal-LM LoRA adapter (a previous run's `final/`, `model.path=job:ID`)."""
    base = Path(output_dir) / "base"
    if model_cfg.source == "pretrained":
        adapter = Path(str(model_cfg.path))
        if _causal_lm_adapter(adapter):
            if is_main and not (base / "config.json").exists():
                merge_adapter(model_cfg, adapter, base)
            return str(base)
        return str(model_cfg.path)
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


def _causal_lm_adapter(path: Path) -> bool:
    import json

    cfg = path / "adapter_config.json"
    return cfg.is_file() and json.loads(cfg.read_text()).get("task_type") in (None, "CAUSAL_LM")


def merge_adapter(model_cfg: Any, adapter: Path, dest: Path) -> Path:
    """Base model + LoRA adapter, merged into plain weights at `dest` (HF format, with the adapter's tokenizer)."""
    import json

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype(model_cfg.dtype),
                                                 trust_remote_code=trust_remote_code(model_cfg))
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = dest.with_name(dest.name + ".tmp")
    merged.save_pretrained(tmp)
    load_tokenizer(model_cfg, str(adapter)).save_pretrained(tmp)
    (tmp / "hpcft_lineage.json").write_text(json.dumps({"adapter": str(adapter), "base": base_path}))
    tmp.rename(dest)
    return dest


def attn_implementation(model_cfg: Any, precision: str = "fp32") -> str:
    """model.attn_implementation, or when null: flash_attention_2 on a GPU where the flash-attn package imports, for
    a model with 16-bit weights (model.dtype bfloat16/float16) trained in 16 bits (training.precision bf16/fp16:
    flash-attention takes no fp32 inputs, which an fp32 model produces outside autocast, e.g. while generating);
    else sdpa (PyTorch's fused attention)."""
    chosen = model_cfg.get("attn_implementation")
    if chosen:
        return str(chosen)
    import importlib.util

    import torch

    half = str(precision) in ("bf16", "fp16") and str(model_cfg.get("dtype")) in ("bfloat16", "float16")
    if half and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_causal_lm(model_cfg: Any, path: str, quantization: Any = None, device_map: Any = None,
                   precision: str = "fp32"):
    """AutoModelForCausalLM from `path`, optionally quantized with bitsandbytes (QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch_dtype(model_cfg.dtype), "trust_remote_code": trust_remote_code(model_cfg),
                    "attn_implementation": attn_implementation(model_cfg, precision)}
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


def enable_gradient_checkpointing(model) -> None:
    """training.gradient_checkpointing: keep one hidden state per layer, recompute the rest in the backward pass
    (non-reentrant: works with frozen embeddings, LoRA and DeepSpeed without enable_input_require_grads)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x: the new name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def params_hash(model, zero3: bool = False) -> str:
    """sha256 of the trainable parameters (gathered under ZeRO-3): equal on every rank of a healthy run, and equal
    between an interrupted-and-resumed run and an uninterrupted one when training is deterministic."""
    import hashlib

    import torch

    from hpcft.train import distributed as dist

    h = hashlib.sha256()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with dist.gathered([p for _, p in named], zero3):
        for n, p in named:
            h.update(n.encode())
            h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
