"""The process a job runs: `python -m hpcft.train.entry --config RUN_DIR/config.yaml [--job-id N]`.

Loads the run's config, builds the RunContext from the environment (torchrun or Slurm), and calls the trainer
module that `hpcft.config.methods.METHODS` names for `method.name`. Exit codes (hpcft.exitcodes): 0 on success,
75 when it saved a checkpoint at the time-limit warning, 2 when the config or the data was refused (one line), 74
when the disk is full (one line naming the file, the filesystem and its free space; hpcft.train.diskfull), 1 on
any other failure (traceback printed), 73 when another trainer of the same rank holds the run directory (one line,
nothing touched). Under torchrun, every rank runs this.

It never outlives the worker that started it: first thing (`die_with_parent`), it asks Linux for SIGKILL when its
parent dies (PR_SET_PDEATHSIG) and leaves at once when that parent (HPCFT_WORKER_PID) is already gone. Its threads
follow the job's CPUs per task (`bind_threads`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

WORKER_PID_ENV = "HPCFT_WORKER_PID"  # set by hpcft.jobs.worker: the pid of the process that started this trainer
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(environ=os.environ) -> None:
    """SIGKILL this process when its parent (the worker) dies, whatever the cluster's proctrack plugin; exit at once
    when the worker that started it is already gone (it died before the prctl took effect). The variable is taken
    out of the environment: a process this trainer starts has another parent."""
    expected = environ.pop(WORKER_PID_ENV, "")
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the worker's process-group kill still ends this trainer
        return
    if expected.isdigit() and os.getppid() != int(expected):
        print(f"[hpcft] the worker that started this trainer (pid {expected}) is gone: not starting", file=sys.stderr,
              flush=True)
        os._exit(1)


def cpus_per_task(cfg, environ=os.environ) -> Optional[int]:
    """The CPUs this process may use: SLURM_CPUS_PER_TASK in a Slurm allocation, else resources.cpus_per_task."""
    for value in (environ.get("SLURM_CPUS_PER_TASK"), (cfg.get("resources") or {}).get("cpus_per_task")):
        try:
            if value is not None and int(value) > 0:
                return int(value)
        except (TypeError, ValueError):
            continue
    return None


def bind_threads(cfg, environ=os.environ) -> Optional[int]:
    """Torch's intra-op threads, OMP_NUM_THREADS, MKL_NUM_THREADS (a smaller value already set is kept) and the
    data-loader workers (at most CPUs - 1: the trainer uses one) follow the job's CPUs per task; the line it prints
    says what the trainer got. Returns the thread count (None: no CPU count known, nothing changed)."""
    cpus = cpus_per_task(cfg, environ)
    if cpus is None:
        return None
    n = cpus
    omp = str(environ.get("OMP_NUM_THREADS", ""))
    if omp.isdigit() and 0 < int(omp) < n:
        n = int(omp)
    environ["OMP_NUM_THREADS"] = environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)
    training = cfg.get("training") or {}
    workers = int(training.get("num_workers", 0) or 0)
    if workers > cpus - 1:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.training.num_workers = workers = max(0, cpus - 1)
    print(f"[hpcft] threads: torch {torch.get_num_threads()}, OMP_NUM_THREADS {n}, data-loader workers {workers} "
          f"({cpus} CPU(s) per task)", flush=True)
    return n


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
    from hpcft import exitcodes
    from hpcft.train import quiet, signals

    signals.install_early()  # the time-limit warning may come while torch is still being imported
    from hpcft.config.compose import from_yaml_file
    from hpcft.train.context import RunContext

    code = 0
    ctx = lock = None
    sampler = None  # resource samples into <run>/monitor/ (hpcft.rundir.monitor; training.monitor_interval)
    try:
        cfg = from_yaml_file(args.config)
        quiet.install(gpus=int((cfg.get("resources") or {}).get("gpus_per_node") or 0))  # HPCFT_VERBOSE=1: all
        if not cfg.get("output_dir"):
            cfg.output_dir = str(Path(args.config).resolve().parent)
        ctx = RunContext.from_env(output_dir=cfg.output_dir, job_id=args.job_id)
        lock = hold_run_dir(ctx)
        if lock is None:
            return exitcodes.RUN_DIR_BUSY
        bind_threads(cfg)
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
    code = leave(ctx, code)
    if lock is not None:
        lock.release()
    return code


def hold_run_dir(ctx):
    """The run directory's lock of this rank (hpcft.rundir.lock), held until the process ends; None (and the one
    line saying who holds it, on stderr) when another live trainer has it."""
    from hpcft.rundir.lock import RunDirBusy, acquire

    try:
        return acquire(ctx.output_dir, ctx.rank, ctx.job_id)
    except RunDirBusy as e:
        print(f"[hpcft] {e}", file=sys.stderr, flush=True)
        return None


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
    full = disk_full(e, ctx)
    if full is not None:  # one line naming the file, the filesystem and its free space; `hpcft retry` on request
        print(f"[hpcft] {full.line(ctx.job_id if ctx is not None else None)}", file=sys.stderr, flush=True)
        return exitcodes.DISK_FULL
    if isinstance(e, ConfigError):  # incl. DataError (file:line)
        # the config or the data is wrong: one line, no traceback, and a code that `hpcft retry` never retries
        print(f"[hpcft] training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return exitcodes.BAD_INPUT
    rank = f"rank {ctx.rank}: " if ctx is not None and ctx.world_size > 1 else ""
    print(f"[hpcft] {rank}training failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
    traceback.print_exc()
    return exitcodes.FAILED


def disk_full(e: BaseException, ctx):
    """The DiskFull that `e` is (hpcft.train.diskfull: ENOSPC/EDQUOT while writing the run, from a checkpoint, the
    metrics, the summary or the final model), or None. The main rank then removes the staging dirs a failed write
    left (checkpoints/*.tmp, final.tmp, summary.json.tmp): `latest` still names the last complete checkpoint."""
    from hpcft.train.diskfull import as_disk_full, is_disk_full

    if not isinstance(e, Exception) or not is_disk_full(e):  # by errno or message only: never a guess here
        return None
    out = Path(ctx.output_dir) if ctx is not None else Path.cwd()
    full = as_disk_full(e, out)
    if full is not None and (ctx is None or ctx.is_main):
        from hpcft.train.checkpoint import CheckpointManager

        CheckpointManager(out / "checkpoints").clean_stale()
        shutil.rmtree(out / "final.tmp", ignore_errors=True)
        (out / "summary.json.tmp").unlink(missing_ok=True)
    return full


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
    die_with_parent()
    sys.exit(main())
