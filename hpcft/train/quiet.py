"""Quiet by default: third-party messages that say nothing about the user's job, filtered out of job logs and of the
CLI's output; all of them come back with `HPCFT_VERBOSE=1` (or `hpcft --verbose CMD`).

Narrow on purpose: each entry names the library's logger or the warning's module and the start of its exact message,
so a job's own warnings and errors, and every other message of the same libraries, still show:
- bitsandbytes: `Failed to load CPU gemm_4bit_forward from kernels-community` (the optional `kernels` package is
  absent; bitsandbytes falls back to its own CPU kernel), logged at import on CPUs with AVX512-BF16;
- transformers: the FutureWarning `is_gradient_checkpointing is deprecated` (peft's merge_and_unload and trl call
  the deprecated alias), and torch's `all_gather_into_tensor is deprecated` (DeepSpeed calls it);
- DeepSpeed: `Setting accelerator to CPU. If you have GPU ...`, printed when DeepSpeed is imported on a machine
  without GPUs. Only where no GPU was asked for: in a GPU job it means the GPUs were not found, and it stays;
- the progress bars of transformers and huggingface_hub (`Loading weights`, `Writing model shards`) where the output
  is no terminal (a job's log, a captured command): carriage-return redraws that say nothing of the job there
  (`HF_HUB_DISABLE_PROGRESS_BARS=1`, unless it is set already).

`install` runs first thing in the trainer's process (hpcft.train.entry) and in the CLI (hpcft.cli.main). Loggers are
configured by name, before the library that owns them is imported; nothing here imports a third-party library.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import Mapping, Optional, Tuple

VERBOSE_ENV = "HPCFT_VERBOSE"

# (logger name, start of the message, only when no GPU was asked for)
NOISE_LOGS: Tuple[Tuple[str, str, bool], ...] = (
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community", False),
    ("DeepSpeed", "Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it",
     True),
)
# (category, regex matching the start of the message, regex matching the module that warns)
NOISE_WARNINGS: Tuple[Tuple[type, str, str], ...] = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    (FutureWarning, r"`torch\.distributed\.all_gather_into_tensor` is deprecated", r"torch\.distributed\."),
)


def verbose(environ: Mapping[str, str] = os.environ) -> bool:
    """True when HPCFT_VERBOSE asks for every message (1, true, yes, on)."""
    return str(environ.get(VERBOSE_ENV, "")).strip().lower() in ("1", "true", "yes", "on")


class NoiseFilter(logging.Filter):
    """Drops the records of one logger whose message starts with `start`; passes every other record."""

    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not record.getMessage().startswith(self.start)
        except Exception:  # a record that cannot be formatted: not ours to judge
            return True


def install(gpus: Optional[int] = None, environ: Mapping[str, str] = os.environ) -> bool:
    """Filter the known noise in this process (idempotent); nothing under HPCFT_VERBOSE. `gpus`: the GPUs the job
    asked for (None: unknown, as in the CLI, where DeepSpeed's accelerator line is noise too). Returns whether
    the filters are installed."""
    if verbose(environ):
        return False
    for name, start, only_without_gpus in NOISE_LOGS:
        if only_without_gpus and gpus:
            continue
        logger = logging.getLogger(name)
        if not any(isinstance(f, NoiseFilter) and f.start == start for f in logger.filters):
            logger.addFilter(NoiseFilter(start))
    for category, message, module in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not _terminal():  # read by huggingface_hub (and through it transformers) when they are imported
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return True


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False
