"""The process a job runs: `python -m hpcft.train.entry --config RUN_DIR/config.yaml [--job-id N]`.

Loads the run's config, builds the RunContext from the environment (torchrun or Slurm), and calls the trainer
module that `hpcft.config.methods.METHODS` names for `method.name`. Exit code 0 on success, 1 on failure (traceback
printed). Under torchrun, every rank runs this.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
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
            from pathlib import Path

            cfg.output_dir = str(Path(args.config).resolve().parent)
        ctx = RunContext.from_env(output_dir=cfg.output_dir, job_id=args.job_id)
        from hpcft.rundir.monitor import start_for

        sampler = start_for(cfg, ctx)
        summary = run(cfg, ctx)
        if ctx.is_main:
            print(f"[hpcft] finished: step {summary.get('final_step')}, final model {summary.get('final_model')}",
                  flush=True)
    except BaseException as e:  # noqa: BLE001 - report every failure with its traceback and a non-zero code
        from hpcft import exitcodes
        from hpcft.errors import ConfigError
        from hpcft.train.signals import SavedAtWarning

        if isinstance(e, SystemExit) and not e.code:
            code = 0
        elif isinstance(e, SavedAtWarning):
            if ctx is None or ctx.is_main:
                print(f"[hpcft] {e}", flush=True)
            code = exitcodes.SAVED_AT_WARNING
        elif isinstance(e, ConfigError):  # incl. DataError (file:line)
            # the config or the data is wrong: one line, no traceback, and a code that `hpcft retry` never retries
            print(f"[hpcft] training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            code = exitcodes.BAD_INPUT
        else:
            rank = f"rank {ctx.rank}: " if ctx is not None and ctx.world_size > 1 else ""
            print(f"[hpcft] {rank}training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            traceback.print_exc()
            code = 1
    if sampler is not None:  # its last sample, before os._exit below skips the thread
        sampler.stop()
    if "hpcft.train.trackers" in sys.modules:  # training.report_to: flush and close them (os._exit skips atexit)
        sys.modules["hpcft.train.trackers"].close_all(ok=code == 0)
    world = ctx.world_size if ctx is not None else int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        # Pitfall 3: gloo sometimes aborts at interpreter exit; a finished rank leaves without the teardown.
        from hpcft.train.metrics import flush_std

        if code == 0:
            try:
                from hpcft.train.distributed import shutdown

                shutdown()
            except Exception as e:  # the run is complete; a teardown failure must not turn it into a failure
                print(f"[hpcft] note: process group teardown failed ({type(e).__name__}: {e})", flush=True)
        flush_std()
        os._exit(code)
    if "torch.distributed" in sys.modules:  # one process under DeepSpeed: a process group of one to close
        from hpcft.train.distributed import shutdown

        try:
            shutdown()
        except Exception as e:
            print(f"[hpcft] note: process group teardown failed ({type(e).__name__}: {e})", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
