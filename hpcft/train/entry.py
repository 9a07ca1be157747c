"""The process a job runs: `python -m hpcft.train.entry --config RUN_DIR/config.yaml [--job-id N]`.

Loads the run's config, builds the RunContext from the environment (torchrun or Slurm), and calls the trainer
module that `hpcft.config.methods.METHODS` names for `method.name`. Exit codes (hpcft.exitcodes): 0 on success,
75 when it saved a checkpoint at the time-limit warning, 2 when the config or the data was refused (one line), 1 on
any other failure (traceback printed). Under torchrun, every rank runs this.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path
from typing import Any


def run(cfg, ctx) -> dict[str, Any]:
    """Run the trainer for cfg.method.name and return its summary."""
    from hpcft.config.compose import resolve_auto
    from hpcft.config.methods import METHODS

    resolve_auto(cfg)  # a config written by hand may still say training.precision=auto
    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"method.name={name}: unknown method; choose one of: {', '.join(METHODS)}")
    module = importlib.import_module(METHODS[name])
    return module.train(cfg, ctx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hpcft.train.entry", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the run's config.yaml")
    ap.add_argument("--job-id", type=int, default=None, help="ledger job id (events are recorded when given)")
    args = ap.parse_args(argv)
    from hpcft.train import signals

    signals.install_early()  # the time-limit warning may come while torch is still being imported
    from hpcft.config.compose import from_yaml_file
    from hpcft.train.context import RunContext

    code = 0
    ctx = None
    sampler = None  # resource samples into <run>/monitor/ (hpcft.rundir.monitor; training.monitor_interval)
    try:
        cfg = from_yaml_file(args.config)
        if not cfg.get("output_dir"):
            cfg.output_dir = str(Path(args.config).resolve().parent)
        ctx = RunContext.from_env(output_dir=cfg.output_dir, job_id=args.job_id)
        from hpcft.rundir.monitor import start_for

        sampler = start_for(cfg, ctx)
        summary = run(cfg, ctx)
        if ctx.is_main:
            print(f"[hpcft] finished: step {summary.get('final_step')}, final model {summary.get('final_model')}",
                  flush=True)
    except BaseException as e:  # noqa: BLE001 - report every failure with its traceback and a non-zero code
        code = failure_code(e, ctx)
    if sampler is not None:  # its last sample, before os._exit below skips the thread
        sampler.stop()
    if "hpcft.train.trackers" in sys.modules:  # training.report_to: flush and close them (os._exit skips atexit)
        sys.modules["hpcft.train.trackers"].close_all(ok=code == 0)
    return leave(ctx, code)


def failure_code(e: BaseException, ctx) -> int:
    """The exit code of a run that raised `e`, reported here: 0 for a clean SystemExit, SAVED_AT_WARNING, BAD_INPUT
    for a refused config or data (one line, no traceback), else FAILED with the traceback."""
    from hpcft import exitcodes
    from hpcft.errors import ConfigError
    from hpcft.train.signals import SavedAtWarning

    if isinstance(e, SystemExit) and not e.code:
        return 0
    if isinstance(e, SavedAtWarning):
        if ctx is None or ctx.is_main:
            print(f"[hpcft] {e}", flush=True)
        return exitcodes.SAVED_AT_WARNING
    if isinstance(e, ConfigError):  # incl. DataError (file:line)
        # the config or the data is wrong: one line, no traceback, and a code that `hpcft retry` never retries
        print(f"[hpcft] training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return exitcodes.BAD_INPUT
    rank = f"rank {ctx.rank}: " if ctx is not None and ctx.world_size > 1 else ""
    print(f"[hpcft] {rank}training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    traceback.print_exc()
    return exitcodes.FAILED


def leave(ctx, code: int) -> int:
    """The end of the process, returning `code`. One of several ranks leaves through os._exit once its output is
    flushed: the torch.distributed backends (gloo) can abort in their destructors at interpreter exit, which
    would turn a finished run into a crash. A rank that succeeded first tears the process group down (a barrier,
    so no rank leaves while the others still talk to it); a failed one does not wait for ranks that may never
    come. A single process closes the process group it may have (DeepSpeed makes one of one) and returns."""
    world = ctx.world_size if ctx is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        from hpcft.train.metrics import flush_std

        if code == 0:
            close_process_group()
        flush_std()
        os._exit(code)
    if "torch.distributed" in sys.modules:
        close_process_group()
    return code


def close_process_group() -> None:
    """hpcft.train.distributed.shutdown; the run is complete, so a teardown failure is only noted, never turned
    into a failure."""
    try:
        from hpcft.train.distributed import shutdown

        shutdown()
    except Exception as e:
        print(f"[hpcft] note: process group teardown failed ({type(e).__name__}: {e})", flush=True)


if __name__ == "__main__":
    sys.exit(main())
