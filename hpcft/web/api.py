"""The console's JSON endpoints, polled by static/console.js: job states (one batched, cached read per interval
however many browsers watch), a job's metrics and resource series (hpcft.rundir.metrics_io / hpcft.rundir.monitor,
the functions of `hpcft curve` and `hpcft monitor`), its log from an offset, and downloads of files inside its run
directory only."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from hpcft.ledger.access import AccessDenied
from hpcft.web.common import ctx

LIVE_TTL_S = 1.5  # one read of the ledger per this many seconds per user, whoever polls
MAX_POINTS = 2000  # per series sent to the browser (min/max per bucket beyond it)
LOG_CHUNK = 256 * 1024
LOG_TAIL = 64 * 1024


class LiveCache:
    """Values computed at most once per `ttl` seconds per key; concurrent callers of a stale key wait for the one
    computation (so 50 watchers cost one ledger read per interval)."""

    def __init__(self, ttl: float = LIVE_TTL_S):
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: Dict[Any, threading.Lock] = {}
        self._values: Dict[Any, Tuple[float, Any]] = {}
        self.computed = 0  # how many times a value was computed (the benchmark reads it)

    def get(self, key: Any, compute: Callable[[], Any], stamp: Any = None) -> Any:
        """The value of `key`, computed again when older than ttl; with a `stamp` (e.g. a file's size and mtime) it
        also stays while the stamp is the same."""
        with self._lock:
            lock = self._keys.setdefault(key, threading.Lock())
        with lock:
            hit = self._values.get(key)
            if hit is not None and (time.monotonic() - hit[0] < self.ttl or (stamp is not None and hit[1][0] == stamp)):
                return hit[1][1]
            value = compute()
            self.computed += 1
            with self._lock:
                if len(self._values) > 4096:
                    self._values.clear()
                self._values[key] = (time.monotonic(), (stamp, value))
            return value


def _state(j) -> Dict[str, Any]:
    from hpcft.timefmt import elapsed

    return {"state": j.state, "reason": j.state_reason or "", "elapsed": elapsed(j.started_at, j.finished_at),
            "slurm": j.slurm_job_id or ""}


def states(request: Request):
    """GET /api/states?ids=1,2,3: {id: {state, reason, elapsed, slurm}}; a job no longer in the ledger: "deleted"."""
    from hpcft.states import State
    from hpcft.web.pages import list_jobs

    c, cache = ctx(request), request.app.state.live
    ids = [int(x) for x in (request.query_params.get("ids") or "").split(",") if x.strip().isdigit()][:500]
    live = cache.get((c.user, "live"), lambda: {j.id: _state(j) for j in list_jobs(
        c.ledger, _filter(state=[State.queued.value, State.running.value]))})
    missing = tuple(sorted(i for i in ids if i not in live))
    ended = cache.get((c.user, "ids", missing), lambda: {j.id: _state(j) for j in c.ledger.search(
        _filter(ids=list(missing)))}) if missing else {}
    return JSONResponse({str(i): live.get(i) or ended.get(i) or {"state": "deleted"} for i in ids})


def _filter(**fields):
    from hpcft.ledger.query import JobFilter

    return JobFilter(**fields)


def _job(request: Request, action: str):
    from hpcft.ledger.access import authorize

    return authorize(ctx(request).ledger, int(request.path_params["job_id"]), action)[0]


def thin(xs: List[float], ys: List[float], n: int = MAX_POINTS) -> Tuple[List[float], List[float]]:
    """At most ~n points of a series for drawing: the lowest and highest point of each bucket (spikes survive)."""
    if len(xs) <= n:
        return xs, ys
    size = len(xs) / (n // 2)
    ox, oy = [], []
    for b in range(n // 2):
        lo, hi = int(b * size), max(int((b + 1) * size), int(b * size) + 1)
        idx = sorted({min(range(lo, hi), key=ys.__getitem__), max(range(lo, hi), key=ys.__getitem__)})
        ox += [xs[i] for i in idx]
        oy += [ys[i] for i in idx]
    return ox, oy


def _panels(panels) -> List[Dict[str, Any]]:
    return [{"label": label, "unit": unit, "series": {k: thin(list(xs), list(ys)) for k, (xs, ys) in s.items()}}
            for label, unit, s in panels]


def _stamp(path: Path) -> Tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return (0, 0)


class Appended:
    """The metrics records of the last few jobs watched, extended with what their metrics.jsonl gained since (the
    file is append-only; a shorter file is read again from the start)."""

    def __init__(self, jobs: int = 8):
        self.jobs = jobs
        self._runs: Dict[Any, Tuple[int, List[dict]]] = {}

    def records(self, run_dir: str) -> List[dict]:
        from hpcft.rundir.metrics_io import read_metrics_since

        off, recs = self._runs.pop(run_dir, (0, []))
        if _stamp(Path(run_dir) / "metrics.jsonl")[0] < off:
            off, recs = 0, []
        new, off = read_metrics_since(run_dir, off)
        recs = recs + new if new else recs
        self._runs[run_dir] = (off, recs)
        while len(self._runs) > self.jobs:
            self._runs.pop(next(iter(self._runs)))
        return recs


def metrics(request: Request):
    """GET /api/job/{id}/metrics: the panels of `hpcft curve` (the method's series, then the loss with validation and
    test), by step; only what metrics.jsonl gained since the last read is parsed."""
    from hpcft.rundir.metrics_io import curve_panels, progress

    j = _job(request, "curve")
    method = str(((j.config or {}).get("method") or {}).get("name") or j.method)

    def compute():
        with request.app.state.appended_lock:
            recs = request.app.state.appended.records(j.output_dir)
        return {"job": j.id, "name": j.name, "state": j.state, "progress": progress(recs, method),
                "panels": _panels([(label, label, s) for _, label, s in curve_panels(recs, method)])}

    stamp = (_stamp(Path(j.output_dir) / "metrics.jsonl"), j.state)
    return JSONResponse(request.app.state.live.get(("metrics", j.id), compute, stamp))


def monitor(request: Request):
    """GET /api/job/{id}/monitor: the panels of `hpcft monitor --png` (minutes since the first sample) and the newest
    sample of each rank (`hpcft top`'s rows)."""
    from hpcft.rundir.metrics_io import read_metrics
    from hpcft.rundir.monitor import latest, monitor_panels, read_samples, read_sstat

    j = _job(request, "monitor")
    method = str(((j.config or {}).get("method") or {}).get("name") or j.method)

    def compute():
        samples = read_samples(j.output_dir)
        if not samples:
            return {"job": j.id, "state": j.state, "panels": [], "latest": [], "count": 0}
        panels = monitor_panels(samples, read_metrics(j.output_dir), method, read_sstat(j.output_dir))
        rows = [{k: r.get(k) for k in ("node", "rank", "proc_cpu_percent", "proc_rss_mb", "ts")}
                for r in latest(samples)]
        return {"job": j.id, "state": j.state, "panels": _panels(panels), "latest": rows, "count": len(samples)}

    mon = Path(j.output_dir) / "monitor"
    stamp = (tuple(_stamp(p) for p in sorted(mon.glob("*"))) if mon.is_dir() else (), j.state)
    return JSONResponse(request.app.state.live.get(("monitor", j.id), compute, stamp))


def inside_run_dir(job, rel: str) -> Path:
    """The file `rel` names inside the job's run directory (symbolic links resolved); AccessDenied for anything
    else: an absolute path, `..`, a link leading out, a directory."""
    root = Path(job.output_dir or "/nonexistent").resolve()
    p = (root / rel).resolve()
    if not rel or not p.is_relative_to(root) or not p.is_file():
        raise AccessDenied(f"{rel or '(no path)'}: not a file inside job {job.id}'s run directory; the console "
                           "serves only the run directory's own files")
    return p


def log(request: Request):
    """GET /api/job/{id}/log?file=logs/job.log&offset=N: the text from byte N (offset -1: the last 64 KiB) and the
    next offset, for the Logs tab's follow."""
    j = _job(request, "logs")
    rel = request.query_params.get("file") or "logs/job.log"
    if not (Path(j.output_dir) / rel).exists():
        return JSONResponse({"text": "", "offset": 0, "state": j.state, "missing": True})
    p = inside_run_dir(j, rel)
    size = p.stat().st_size
    given = request.query_params.get("offset") or "-1"
    off = int(given) if given.lstrip("-").isdigit() else -1
    off = max(0, size - LOG_TAIL) if off < 0 else min(off, size)
    with open(p, "rb") as f:
        f.seek(off)
        data = f.read(LOG_CHUNK)
    return JSONResponse({"text": data.decode(errors="replace"), "offset": off + len(data), "state": j.state})


def download(request: Request):
    """GET /job/{id}/file?path=REL: a file of the run directory, as an attachment."""
    j = _job(request, "logs")
    p = inside_run_dir(j, request.query_params.get("path") or "")
    return FileResponse(p, filename=p.name, content_disposition_type="attachment",
                        media_type="application/octet-stream")


def routes() -> list:
    return [Route("/api/states", states), Route("/api/job/{job_id:int}/metrics", metrics),
            Route("/api/job/{job_id:int}/monitor", monitor), Route("/api/job/{job_id:int}/log", log),
            Route("/job/{job_id:int}/file", download)]
