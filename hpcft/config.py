"""Compose a job config from `conf/` plus overrides, and validate it before anything is submitted."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional

from omegaconf import DictConfig, OmegaConf

from hpcft import paths, schema
from hpcft.errors import ConfigError
from hpcft.timefmt import parse_duration

_RESOLVERS_DONE = False


def register_resolvers() -> None:
    global _RESOLVERS_DONE
    if not _RESOLVERS_DONE:
        OmegaConf.register_new_resolver("hpcft_asset", paths.asset, replace=True)
        _RESOLVERS_DONE = True


def group_options(group: str) -> List[str]:
    d = paths.conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def compose(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """The resolved job config for `overrides` (Hydra syntax). Raises ConfigError with one line on any problem."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    schema.register()
    overrides = list(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(paths.conf_dir()), job_name="hpcft"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e, overrides)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    return cfg


def _first_line(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf error: the deepest cause, with the key it concerns."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    msg = lines[0] if lines else type(e).__name__
    key = next((x.split(":", 1)[1].strip() for x in lines[1:] if x.startswith("full_key:")), None)
    if "Could not override" in msg or "not in struct" in msg or "Key '" in msg and "not" in msg:
        msg += " (no such key: check the spelling, see all keys with `hpcft submit --dry-run`)"
    return f"{key}: {msg}" if key and key not in msg else msg


def _missing_option_message(e: Exception, overrides: List[str]) -> str:
    text = str(e)
    for group in ("model", "method", "resources", "data", "deepspeed", "experiment"):
        if f"'{group}/" in text or f"{group}/" in text.split("\n")[0]:
            chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
            opts = ", ".join(group_options(group))
            return f"{group}={chosen}: unknown option; choose one of: {opts}"
    return _first_line(e)


# ---------------------------------------------------------------------------------------------------- validation

_SFT = ("auto", "text", "prompt_response", "alpaca", "messages")
CAUSAL_FORMATS = {"pretrain": ("auto", "text"), "full": _SFT, "lora": _SFT, "qlora": _SFT}

def _check(ok: bool, key: str, value: object, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}: {problem}; {fix}")


def _file(key: str, value: Optional[str], required: bool) -> None:
    if value is None:
        _check(not required, key, value, "is required", f"set {key}=/path/to/file.jsonl")
        return
    p = Path(os.path.expanduser(str(value)))
    _check(p.is_file(), key, value, "file not found", f"set {key} to an existing JSONL file")


def validate(cfg: DictConfig) -> DictConfig:
    """Check what types cannot (ranges, choices, files). Raises ConfigError naming the key and the fix."""
    t, m, r, d, mo = cfg.training, cfg.method, cfg.resources, cfg.data, cfg.model

    _check(cfg.executor in ("auto", "local", "slurm"), "executor", cfg.executor,
           "unknown executor", "use executor=auto|local|slurm")
    _check(bool(str(cfg.name).strip()), "name", cfg.name, "must not be empty", "set name=my-run")

    # method
    _check(m.name in schema.METHODS, "method.name", m.name, "unknown method",
           "choose one of: " + ", ".join(schema.METHODS))
    if m.name in ("lora", "qlora") or m.get("lora") is not None:
        _check(m.get("lora") is not None, "method.lora", None, f"{m.name} needs LoRA settings",
               "use method=lora or method=qlora")
        _check(m.lora.rank >= 1, "method.lora.rank", m.lora.rank, "must be >= 1", "e.g. method.lora.rank=8")
        _check(m.lora.alpha > 0, "method.lora.alpha", m.lora.alpha, "must be > 0", "e.g. method.lora.alpha=16")
        _check(0 <= m.lora.dropout < 1, "method.lora.dropout", m.lora.dropout, "must be in [0, 1)",
               "e.g. method.lora.dropout=0.05")
        _check(len(m.lora.target_modules) > 0, "method.lora.target_modules", list(m.lora.target_modules),
               "must name at least one module", "e.g. method.lora.target_modules=[q_proj,v_proj]")
    if m.name == "qlora":
        q = m.get("quantization")
        _check(q is not None, "method.quantization", None, "qlora needs quantization settings", "use method=qlora")
        _check(q.bits == 4, "method.quantization.bits", q.bits, "QLoRA is 4-bit", "set method.quantization.bits=4")
        _check(q.quant_type in ("nf4", "fp4"), "method.quantization.quant_type", q.quant_type,
               "unknown 4-bit type", "use nf4 or fp4")

    # model
    _check(mo.source in ("config", "pretrained"), "model.source", mo.source, "unknown source",
           "use model.source=config|pretrained")
    if mo.source == "config":
        _check("model_type" in mo.arch, "model.arch.model_type", None, "a model built from a config needs a type",
               "e.g. model.arch.model_type=llama")
    else:
        _check(bool(mo.path), "model.path", mo.path, "a pretrained model needs a path",
               "set model.path=/local/dir or a hub id")
    _check(mo.dtype in ("float32", "bfloat16", "float16"), "model.dtype", mo.dtype, "unknown dtype",
           "use float32|bfloat16|float16")

    # training
    _check(t.epochs >= 1, "training.epochs", t.epochs, "must be >= 1", "e.g. training.epochs=3")
    _check(t.max_steps is None or t.max_steps >= 1, "training.max_steps", t.max_steps, "must be >= 1 or null",
           "e.g. training.max_steps=100")
    _check(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "must be > 0",
           "e.g. training.learning_rate=2e-4")
    _check(t.batch_size >= 1, "training.batch_size", t.batch_size, "must be >= 1", "e.g. training.batch_size=8")
    _check(t.gradient_accumulation >= 1, "training.gradient_accumulation", t.gradient_accumulation,
           "must be >= 1", "e.g. training.gradient_accumulation=4")
    _check(t.sequence_length >= 1, "training.sequence_length", t.sequence_length, "must be >= 1",
           "e.g. training.sequence_length=2048")
    _check(0 <= t.warmup_ratio < 1, "training.warmup_ratio", t.warmup_ratio, "must be in [0, 1)",
           "e.g. training.warmup_ratio=0.03")
    _check(0 <= t.lr_decay_ratio <= 1, "training.lr_decay_ratio", t.lr_decay_ratio, "must be in [0, 1]",
           "use 1 for a constant lr, e.g. training.lr_decay_ratio=0.1")
    _check(t.weight_decay >= 0, "training.weight_decay", t.weight_decay, "must be >= 0",
           "e.g. training.weight_decay=0.01")
    _check(t.max_grad_norm >= 0, "training.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 = no clipping)",
           "e.g. training.max_grad_norm=1.0")
    _check(t.precision in ("fp32", "bf16", "fp16"), "training.precision", t.precision, "unknown precision",
           "use fp32|bf16|fp16")
    _check(t.save_strategy in ("steps", "epoch"), "training.save_strategy", t.save_strategy, "unknown strategy",
           "use training.save_strategy=steps|epoch")
    _check(t.save_interval >= 1, "training.save_interval", t.save_interval, "must be >= 1",
           "e.g. training.save_interval=100")
    keep = str(t.keep_checkpoints)
    _check(keep in ("off", "all") or (keep.isdigit() and int(keep) >= 1), "training.keep_checkpoints", keep,
           "must be off, all or a positive number", "e.g. training.keep_checkpoints=3")
    if t.resume_from not in (None, "latest"):
        _check(Path(str(t.resume_from)).is_dir(), "training.resume_from", t.resume_from,
               "checkpoint directory not found", "use training.resume_from=latest or an existing checkpoint dir")

    # data
    formats = ("auto", "text", "prompt_response", "alpaca", "messages", "preference", "prompt", "image_caption")
    _check(d.format in formats, "data.format", d.format, "unknown format", "use " + "|".join(formats))
    if m.name in CAUSAL_FORMATS:
        _check(d.format in CAUSAL_FORMATS[m.name], "data.format", d.format, f"method={m.name} cannot train on it",
               "use data.format=" + "|".join(CAUSAL_FORMATS[m.name]))
    _file("data.train", d.train, required=True)
    _file("data.validation", d.validation, required=False)
    _file("data.test", d.test, required=False)

    # resources
    _check(r.nodes >= 1, "resources.nodes", r.nodes, "must be >= 1", "e.g. resources.nodes=2")
    _check(r.gpus_per_node >= 0, "resources.gpus_per_node", r.gpus_per_node, "must be >= 0",
           "e.g. resources.gpus_per_node=8")
    _check(r.tasks_per_node >= 1, "resources.tasks_per_node", r.tasks_per_node, "must be >= 1",
           "e.g. resources.tasks_per_node=8")
    _check(r.cpus_per_task >= 1, "resources.cpus_per_task", r.cpus_per_task, "must be >= 1",
           "e.g. resources.cpus_per_task=8")
    try:
        parse_duration(r.time)
    except ValueError:
        _check(False, "resources.time", r.time, "not a Slurm time limit", "use HH:MM:SS, D-HH:MM:SS or minutes")
    _check(r.priority in ("low", "normal", "high"), "resources.priority", r.priority, "unknown priority",
           "use low|normal|high")
    _check(r.gpu_directive in ("gres", "gpus-per-node"), "resources.gpu_directive", r.gpu_directive,
           "unknown GPU directive", "use gres|gpus-per-node")

    from hpcft.train.method_checks import check_method  # reward / dpo / grpo / t2i_lora specifics (no torch)

    check_method(cfg)
    return cfg


def load(overrides: Iterable[str] = ()) -> DictConfig:
    """compose + validate."""
    return validate(compose(overrides))


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml_file(path: os.PathLike) -> DictConfig:
    register_resolvers()
    return OmegaConf.load(path)  # type: ignore[return-value]
