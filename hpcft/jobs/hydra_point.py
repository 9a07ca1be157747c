"""The node side of a Hydra app's sweep point (`hydra/launcher=hpcft`, submitted by `hpcft.jobs.hydra_launch`).

The ordinary worker (`hpcft.jobs.worker.run_in_allocation`) sees method `hydra` and runs `point_argv` instead of
the trainer: the same state recording (queued -> running -> success / error, restarts, stop requests, the
time-limit warning), logs in `logs/job.log`. `python -m hpcft.jobs.hydra_point PAYLOAD` runs Hydra's `run_job` for
the point and writes the task's return value to `.hpcft-result.pkl` (`load_result`) and, when it is a number or a
mapping of numbers, those numbers to `.hpcft-results.json` (hpcft.rundir.returned): what `hpcft sweep ID` shows
side by side for the points of a Hydra app's sweep (hpcft.ledger.sweeps).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any, List

from hpcft.rundir.returned import HYDRA_METHOD, save_scalars

__all__ = ["HYDRA_METHOD", "PAYLOAD", "RESULT", "load_result", "point_argv", "run_point", "save_return"]

PAYLOAD = ".hpcft-point.pkl"
RESULT = ".hpcft-result.pkl"


def load_result(output_dir: os.PathLike) -> Any:
    """The task function's return value of a finished point (its run directory, `hpcft show` names it)."""
    path = Path(output_dir) / RESULT
    if not path.exists():
        from hpcft.errors import NotFound

        raise NotFound(f"{path}: no result (yet); see `hpcft list` for the point's state")
    import cloudpickle  # noqa: F401  (a result may hold objects pickled by value)

    return pickle.loads(path.read_bytes())


def point_argv(output_dir: os.PathLike) -> List[str]:
    """What the worker runs for a Hydra point (in place of the trainer)."""
    return [sys.executable, "-u", "-m", "hpcft.jobs.hydra_point", str(Path(output_dir) / PAYLOAD)]


def run_point(payload: Path) -> int:
    """Run one point: Hydra's `run_job` with the composed config, in the point's output directory. 0 when the
    task returned (its value saved by rank 0), 1 when it raised (the traceback goes to the job's log)."""
    import traceback

    outer = pickle.loads(payload.read_bytes())
    for p in reversed(outer["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    data = cloudpickle.loads(outer["blob"])
    Singleton.set_state(data["singleton_state"])
    setup_globals()
    # the time-limit warning (resources.signal_grace) reaches the app as SIGUSR1: ignored unless it handles it
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    ret = run_job(hydra_context=data["hydra_context"], task_function=data["task_function"], config=data["config"],
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    if ret.status != JobStatus.COMPLETED:
        e = ret._return_value
        traceback.print_exception(type(e), e, e.__traceback__)
        print(f"error: the task raised {type(e).__name__}: {e}", flush=True)
        return 1
    if os.environ.get("RANK", "0") == "0":
        save_return(payload.parent, ret.return_value)
    return 0


def save_return(out: Path, value: Any) -> None:
    """The task's return value, pickled, and its numbers as JSON (`hpcft sweep` reads them). A value that cannot be
    saved is noted in the log; it never fails a task that finished."""
    import cloudpickle

    try:
        found = save_scalars(out, value)
        if found:
            print("[hpcft] returned: " + ", ".join(f"{k}={'nan' if v is None else f'{v:.6g}'}"
                                                   for k, v in found.items()), flush=True)
    except OSError as e:
        print(f"[hpcft] note: the returned numbers were not saved ({type(e).__name__}: {e})", flush=True)
    try:
        tmp = out / (RESULT + ".tmp")
        tmp.write_bytes(cloudpickle.dumps(value))
        tmp.replace(out / RESULT)
    except Exception as e:  # an unpicklable return value
        print(f"[hpcft] note: the return value was not saved ({type(e).__name__}: {e})", flush=True)


if __name__ == "__main__":
    sys.exit(run_point(Path(sys.argv[1])))
