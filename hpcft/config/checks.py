"""The common rules every job config must satisfy beyond its types (name, model, training, DeepSpeed, resources),
each a function over the composed config. A refusal is one line `key=value: problem; fix` (ConfigError: exit code
2, nothing created). The method's own rules are in `hpcft.config.methods`; the checks that read data files or
other layers (data, trackers, notifications, publishing) run in `hpcft.jobs.preflight`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import DictConfig

from hpcft.config.methods import at_least, check
from hpcft.timefmt import parse_duration

# validate = the common rules below (every method), then the method's own (hpcft.config.methods via methods.METHOD_SPECS).
# Every refusal is one line `key=value: problem; fix` (ConfigError: exit code 2, nothing created).


_NAME_OK = re.compile(r"[\w.+@:,= -]+")
NAME_MAX, DESCRIPTION_MAX = 128, 2000
# output_dir may not point into the system's own directories
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root/.ssh", "/run", "/sbin", "/sys",
               "/usr", "/var/lib", "/var/spool")


def text(key: str, value: object, limit: int) -> str:
    """A free-text value that is valid UTF-8, one line without control characters, at most `limit` long."""
    s = str(value)
    shown = ascii(s[:40]) + ("..." if len(s) > 40 else "")
    check(not any("\ud800" <= c <= "\udfff" for c in s), key, shown, "not valid UTF-8",
          f"write {key} in UTF-8")
    check(not any(ord(c) < 32 or ord(c) == 127 for c in s), key, shown,
          "contains a newline or another control character", f"write {key} on one line")
    check(len(s) <= limit, key, shown, f"{len(s)} characters, at most {limit} allowed", f"shorten {key}")
    return s


def check_job(cfg: DictConfig) -> None:
    check(cfg.executor in ("auto", "local", "slurm"), "executor", cfg.executor,
          "unknown executor", "use executor=auto|local|slurm")
    check(bool(str(cfg.name).strip()), "name", cfg.name, "must not be empty", "set name=my-run")
    name = text("name", cfg.name, NAME_MAX)
    check(bool(_NAME_OK.fullmatch(name)), "name", ascii(name), "may hold only letters, digits, spaces and . _ - + @ : , =",
          "e.g. name=my-run (put free text in --description)")
    if cfg.get("description") is not None:
        text("description", cfg.description, DESCRIPTION_MAX)
    if cfg.get("output_dir"):
        out = Path(os.path.expanduser(str(cfg.output_dir))).resolve()
        check(not any(out == Path(d) or Path(d) in out.parents for d in SYSTEM_DIRS), "output_dir", cfg.output_dir,
              "a system directory", "use a directory under your home or scratch space")
        check(not out.exists() or out.is_dir(), "output_dir", cfg.output_dir, "exists and is not a directory",
              "choose another output_dir")
    check(cfg.get("access", "none") in ("none", "ro", "rw"), "access", cfg.get("access"), "unknown access",
          "use access=none|ro|rw (what the other members of the project may do: nothing, read, read and change)")


def check_model(cfg: DictConfig) -> None:
    mo = cfg.model
    check(mo.source in ("config", "pretrained"), "model.source", mo.source, "unknown source",
          "use model.source=config|pretrained")
    if mo.source == "config":
        check("model_type" in mo.arch, "model.arch.model_type", None, "a model built from a config needs a type",
              "e.g. model.arch.model_type=llama")
    else:
        check(bool(mo.path), "model.path", mo.path, "a pretrained model needs a path",
              "set model.path=/local/dir or a hub id")
    check(mo.dtype in ("float32", "bfloat16", "float16"), "model.dtype", mo.dtype, "unknown dtype",
          "use float32|bfloat16|float16")
    attn = mo.get("attn_implementation")
    check(attn in ATTN_IMPLEMENTATIONS, "model.attn_implementation", attn, "unknown attention implementation",
          "use " + "|".join(a for a in ATTN_IMPLEMENTATIONS if a) + " or null (flash_attention_2 for a 16-bit "
          "model on a GPU with flash-attn installed, else sdpa)")


def check_training(cfg: DictConfig) -> None:
    t = cfg.training
    at_least(t, "training", "epochs", 1, 3)
    check(t.max_steps is None or t.max_steps >= 1, "training.max_steps", t.max_steps, "must be >= 1 or null",
          "e.g. training.max_steps=100")
    check(t.learning_rate > 0, "training.learning_rate", t.learning_rate, "must be > 0",
          "e.g. training.learning_rate=2e-4")
    at_least(t, "training", "batch_size", 1, 8)
    at_least(t, "training", "gradient_accumulation", 1, 4)
    at_least(t, "training", "sequence_length", 1, 2048)
    check(0 <= t.warmup_ratio < 1, "training.warmup_ratio", t.warmup_ratio, "must be in [0, 1)",
          "e.g. training.warmup_ratio=0.03")
    check(0 <= t.lr_decay_ratio <= 1, "training.lr_decay_ratio", t.lr_decay_ratio, "must be in [0, 1]",
          "use 1 for a constant lr, e.g. training.lr_decay_ratio=0.1")
    at_least(t, "training", "weight_decay", 0, 0.01)
    check(t.max_grad_norm >= 0, "training.max_grad_norm", t.max_grad_norm, "must be >= 0 (0 = no clipping)",
          "e.g. training.max_grad_norm=1.0")
    check(t.precision in ("auto", "fp32", "bf16", "fp16"), "training.precision", t.precision, "unknown precision",
          "use auto|fp32|bf16|fp16")
    check(t.save_strategy in ("steps", "epoch"), "training.save_strategy", t.save_strategy, "unknown strategy",
          "use training.save_strategy=steps|epoch")
    at_least(t, "training", "save_interval", 1, 100)
    check(t.monitor_interval == 0 or t.monitor_interval >= 0.1, "training.monitor_interval", t.monitor_interval,
          "must be 0 (off) or at least 0.1 seconds", "e.g. training.monitor_interval=5")
    keep = str(t.keep_checkpoints)
    check(keep in ("off", "all") or (keep.isdigit() and int(keep) >= 1), "training.keep_checkpoints", keep,
          "must be off, all or a positive number", "e.g. training.keep_checkpoints=3")
    if t.resume_from not in (None, "latest"):
        check(Path(str(t.resume_from)).is_dir(), "training.resume_from", t.resume_from,
              "checkpoint directory not found", "use training.resume_from=latest or an existing checkpoint dir")
    check_kernels(cfg)


def check_kernels(cfg: DictConfig) -> None:
    """training.kernels: a known choice; `liger` only where Liger's kernels apply (hpcft.config.kernels)."""
    from hpcft.config import kernels

    choice = str(cfg.training.get("kernels", "auto"))
    check(choice in kernels.KERNELS, "training.kernels", choice, "unknown kernels", "use auto|liger|none")
    if choice == "liger":
        from hpcft.config.memory import model_arch

        arch, _ = model_arch(cfg.model)
        kernels.resolve(choice, str(cfg.method.name), int(cfg.resources.gpus_per_node),
                        arch.model_type if arch is not None else None, kernels.liger_installed())


def check_deepspeed(cfg: DictConfig) -> None:
    stage = cfg.deepspeed.get("stage")
    check(stage is None or stage in (0, 1, 2, 3), "deepspeed.stage", stage, "unknown ZeRO stage",
          "use deepspeed=none|zero0|zero1|zero2|zero3|zero3_offload")


def check_resources(cfg: DictConfig) -> None:
    r = cfg.resources
    for key, least, example in (("nodes", 1, 2), ("gpus_per_node", 0, 8), ("tasks_per_node", 1, 8),
                                ("cpus_per_task", 1, 8)):
        at_least(r, "resources", key, least, example)
    for key, most in (("nodes", 4096), ("gpus_per_node", 64), ("tasks_per_node", 1024), ("cpus_per_task", 1024)):
        check(r[key] <= most, f"resources.{key}", r[key], f"more than {most}, surely a typo", "ask for less")
    try:
        limit = parse_duration(r.time)
    except ValueError:
        limit = None
    check(limit is not None, "resources.time", r.time, "not a Slurm time limit",
          "use HH:MM:SS, D-HH:MM:SS or minutes")
    check(limit > 0, "resources.time", r.time, "must be longer than 0", "e.g. resources.time=01:00:00")
    check(limit <= 365 * 86400, "resources.time", r.time, "longer than a year, surely a typo",
          "e.g. resources.time=2-00:00:00")
    check(r.priority in ("low", "normal", "high"), "resources.priority", r.priority, "unknown priority",
          "use low|normal|high")
    check(r.gpu_directive in ("gres", "gpus-per-node"), "resources.gpu_directive", r.gpu_directive,
          "unknown GPU directive", "use gres|gpus-per-node")
    grace = r.signal_grace  # null: 120 s, at most half the limit (hpcft.slurm.sbatch.warning_grace)
    check(grace is None or grace >= 0, "resources.signal_grace", grace,
          "must be >= 0 (seconds; 0 = no time-limit warning)", "e.g. resources.signal_grace=120")
    check(grace is None or grace < limit, "resources.signal_grace", grace,
          f"must be shorter than resources.time={r.time} ({limit} s)",
          f"e.g. resources.signal_grace={max(limit // 2, 1) if limit < 240 else 120} (0 = no warning)")
    check(r.on_timeout in ("expire", "requeue"), "resources.on_timeout", r.on_timeout, "unknown action",
          "use resources.on_timeout=expire|requeue")
    at_least(r, "resources", "max_requeues", 0, 3)
    gpu_mem = r.get("gpu_mem")
    check(gpu_mem is None or 0 < gpu_mem <= 4096, "resources.gpu_mem", gpu_mem,
          "GiB per GPU, more than 0 and at most 4096", "e.g. resources.gpu_mem=80 (null: no memory check)")


ATTN_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


