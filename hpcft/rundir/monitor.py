"""Resource monitoring of a job: a sampler inside every trainer process, and the readers behind `hpcft top` and
`hpcft monitor`. Torch-free (psutil; nvidia-ml-py when it imports and finds GPUs).

Every rank of a job runs a `Sampler` thread (started by hpcft.train.entry) that appends one JSON line every
`training.monitor_interval` seconds (0 = off) to `<run>/monitor/rank-<R>.jsonl`, the first about a second after the
start and a last one when the trainer ends:

- every rank, its own process with its children: `proc_cpu_percent` (100 = one core busy), `proc_rss_mb`;
- local rank 0 of every node, for the node: `cpu_percent` (of all cores), `cpus`, `load1`, `mem_used_mb`,
  `mem_total_mb`, `disk_read_mb_s`, `disk_write_mb_s`, `net_recv_mb_s`, `net_sent_mb_s` (all interfaces, loopback
  included: ranks on one node talk over it) and `gpus` ([{index, util_percent, mem_used_mb, mem_total_mb}] for
  the GPUs this job sees);
- rank 0 of a Slurm job also asks Slurm's accounting (`sstat`, every SSTAT_EVERY_S while it trains) and appends
  its rows to `<run>/monitor/sstat.jsonl`.

The end of the trainer ends the job: `stop()` never waits for a `sstat` under way (up to 15 s) and asks none itself.

One file per rank: no two processes (or nodes, on a shared file system) ever append to the same file. A sample
that fails is reported once on the trainer's output and never stops the training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

DEFAULT_INTERVAL_S = 5.0
FIRST_SAMPLE_S = 1.0  # the first sample comes this soon (or after the interval when it is shorter)
SSTAT_EVERY_S = 30.0
MB = 2**20
MONITOR_DIR = "monitor"
SSTAT_FILE = "sstat.jsonl"


def node_name(environ: Mapping[str, str] = os.environ) -> str:
    """The node a process runs on: Slurm's name for it (several slurmd may share one host), else the host name."""
    return environ.get("SLURMD_NODENAME") or os.uname().nodename


def _visible_gpus(environ: Mapping[str, str]) -> Optional[List[str]]:
    """CUDA_VISIBLE_DEVICES as a list (indices or UUIDs); None when unset (every GPU)."""
    v = environ.get("CUDA_VISIBLE_DEVICES")
    if v is None:
        return None
    return [x.strip() for x in v.split(",") if x.strip() and x.strip() != "-1"]


class _Gpus:
    """GPU utilisation and memory through NVML (nvidia-ml-py); empty without the package, a driver or a GPU."""

    def __init__(self, environ: Mapping[str, str] = os.environ):
        self.handles: List[Tuple[int, Any]] = []
        self.nvml = None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # no package, no driver (libnvidia-ml), no GPU: a CPU job has no GPU series
            return
        self.nvml = pynvml
        visible = _visible_gpus(environ)
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            if visible is not None:
                uuid = pynvml.nvmlDeviceGetUUID(h)
                uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                if str(i) not in visible and not any(uuid.startswith(v) for v in visible if v.startswith("GPU-")):
                    continue
            self.handles.append((i, h))

    def sample(self) -> List[Dict[str, Any]]:
        out = []
        for i, h in self.handles:
            util = self.nvml.nvmlDeviceGetUtilizationRates(h)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
            out.append({"index": i, "util_percent": float(util.gpu), "mem_used_mb": round(mem.used / MB, 1),
                        "mem_total_mb": round(mem.total / MB, 1)})
        return out

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


def _proc_counters(proc) -> Tuple[float, float]:
    """(cpu seconds, rss bytes) of a process and its live children; children that ended count through
    children_user/children_system."""
    import psutil

    t = proc.cpu_times()
    cpu = t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    rss = proc.memory_info().rss
    for c in proc.children(recursive=True):
        try:
            ct = c.cpu_times()
            cpu += ct.user + ct.system
            rss += c.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return cpu, rss


def _node_counters() -> Dict[str, float]:
    import psutil

    ct = psutil.cpu_times()
    out = {"cpu_total": sum(ct), "cpu_idle": ct.idle + getattr(ct, "iowait", 0.0)}
    try:
        d = psutil.disk_io_counters()
    except Exception:  # some containers have no /proc/diskstats
        d = None
    if d is not None:
        out["disk_read"], out["disk_write"] = float(d.read_bytes), float(d.write_bytes)
    n = psutil.net_io_counters()
    if n is not None:
        out["net_recv"], out["net_sent"] = float(n.bytes_recv), float(n.bytes_sent)
    return out


class Sampler:
    """Samples this process (every rank) and its node (`node_level`: local rank 0) into monitor/rank-<R>.jsonl.
    `start()` runs it as a daemon thread; `stop()` writes the last sample. `sample()` is one record, for tests."""

    def __init__(self, run_dir: os.PathLike, rank: int = 0, local_rank: int = 0, interval: float = DEFAULT_INTERVAL_S,
                 node: Optional[str] = None, slurm_job: Optional[str] = None,
                 environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = time.time):
        import psutil

        self.dir = Path(run_dir) / MONITOR_DIR
        self.path = self.dir / f"rank-{rank}.jsonl"
        self.rank, self.local_rank = int(rank), int(local_rank)
        self.node_level = self.local_rank == 0
        self.node = node or node_name(environ)
        self.interval = float(interval)
        self.clock = clock
        # rank 0 of a Slurm job also records Slurm's accounting of its running steps
        self.slurm_job = slurm_job if self.rank == 0 and slurm_job and shutil.which("sstat") else None
        self._proc = psutil.Process()
        self._gpus = _Gpus(environ) if self.node_level else None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._f = None
        self._noted = False
        self._closed = False
        self._last_sstat = 0.0
        self._prev = self._counters()

    # ---------------------------------------------------------------------------------------------- sampling

    def _counters(self) -> Dict[str, float]:
        cpu, rss = _proc_counters(self._proc)
        c = {"t": self.clock(), "proc_cpu": cpu, "proc_rss": float(rss)}
        if self.node_level:
            c.update(_node_counters())
        return c

    def sample(self) -> Dict[str, Any]:
        """One record: the counters now against those of the previous sample (rates over that span)."""
        import psutil

        now = self._counters()
        prev, self._prev = self._prev, now
        dt = max(now["t"] - prev["t"], 1e-6)
        rec: Dict[str, Any] = {"ts": round(now["t"], 3), "node": self.node, "rank": self.rank,
                               "local_rank": self.local_rank, "pid": self._proc.pid,
                               "proc_cpu_percent": round(max(0.0, now["proc_cpu"] - prev["proc_cpu"]) / dt * 100, 1),
                               "proc_rss_mb": round(now["proc_rss"] / MB, 1)}
        if not self.node_level:
            return rec
        busy = (now["cpu_total"] - prev["cpu_total"]) - (now["cpu_idle"] - prev["cpu_idle"])
        total = now["cpu_total"] - prev["cpu_total"]
        vm = psutil.virtual_memory()
        rec.update(cpu_percent=round(max(0.0, min(100.0, busy / total * 100)) if total > 0 else 0.0, 1),
                   cpus=psutil.cpu_count(), load1=round(os.getloadavg()[0], 2),
                   mem_used_mb=round((vm.total - vm.available) / MB, 1), mem_total_mb=round(vm.total / MB, 1))
        for key in ("disk_read", "disk_write", "net_recv", "net_sent"):
            if key in now and key in prev:
                rec[f"{key}_mb_s"] = round(max(0.0, now[key] - prev[key]) / MB / dt, 4)
        if self._gpus is not None and self._gpus.handles:
            rec["gpus"] = self._gpus.sample()
        return rec

    def _write(self, path: Path, rec: Dict[str, Any]) -> None:
        line = json.dumps(rec) + "\n"
        if path == self.path:
            if self._f is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a", encoding="utf-8")
            self._f.write(line)
            self._f.flush()
        else:
            with open(path, "a", encoding="utf-8") as f:
                f.write(line)

    def _note(self, what: str, e: BaseException) -> None:
        if not self._noted:  # once: a broken counter must not flood the log
            self._noted = True
            print(f"[hpcft] note: monitoring: {what} failed ({type(e).__name__}: {e}); training goes on",
                  file=sys.stderr, flush=True)

    def tick(self, final: bool = False) -> None:
        """Write one sample (and Slurm's accounting when due, never in the final one: a `sstat` may take 15 s and
        the job must not wait for it); never raises."""
        with self._lock:
            if self._closed:
                return
            try:
                rec = self.sample()
                if final:
                    rec["final"] = True
                self._write(self.path, rec)
            except Exception as e:
                self._note("a sample", e)
        if self.slurm_job and not final and self.clock() - self._last_sstat >= SSTAT_EVERY_S:
            self._last_sstat = self.clock()  # outside the lock: the final sample never waits for it
            try:
                self.record_sstat()
            except Exception as e:
                self._note("sstat", e)

    def record_sstat(self) -> List[Dict[str, Any]]:
        """Slurm's accounting of this job's running steps (`sstat`), appended to monitor/sstat.jsonl."""
        from hpcft.slurm import commands as C

        rows = C.parse_sstat(C.run(C.sstat_argv(self.slurm_job), timeout=15))
        ts = round(self.clock(), 3)
        for r in rows:
            self._write(self.dir / SSTAT_FILE, {"ts": ts, **r})
        return rows

    # ---------------------------------------------------------------------------------------------- thread

    def _loop(self) -> None:
        wait = min(self.interval, FIRST_SAMPLE_S)
        while not self._stop.wait(wait):
            self.tick()
            wait = self.interval

    def start(self) -> "Sampler":
        self.dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="hpcft-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and write the last sample (the process's state at its end). Never waits for a `sstat`
        under way: the daemon thread is left to it (the process ends; the worker ends what is left of its group)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a sample takes milliseconds; a sstat call is not waited for
            self._thread = None
        self.tick(final=True)
        with self._lock:
            self._closed = True
            if self._f is not None:
                self._f.close()
                self._f = None
            if self._gpus is not None:
                self._gpus.close()


def start_for(cfg: Any, ctx: Any, environ: Mapping[str, str] = os.environ) -> Optional[Sampler]:
    """The sampler of this trainer process (`training.monitor_interval` seconds; 0 = off), started; None when off.
    Never raises: a job whose monitoring cannot start trains without it (and says so)."""
    try:
        interval = float((cfg.get("training") or {}).get("monitor_interval", DEFAULT_INTERVAL_S) or 0)
        if interval <= 0:
            return None
        return Sampler(ctx.output_dir, rank=ctx.rank, local_rank=ctx.local_rank, interval=interval,
                       slurm_job=environ.get("SLURM_JOB_ID"), environ=environ).start()
    except Exception as e:
        print(f"[hpcft] note: monitoring not started ({type(e).__name__}: {e}); training goes on",
              file=sys.stderr, flush=True)
        return None


# ------------------------------------------------------------------------------------------------ readers

def _read_jsonl(path: Path, tail_bytes: Optional[int] = None) -> List[dict]:
    """The JSON objects of a JSONL file (only those in its last `tail_bytes` when given: a live view of a long run
    reads the end alone); a torn line is skipped."""
    out = []
    try:
        with open(path, "rb") as f:
            if tail_bytes is not None:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail_bytes))
                if size > tail_bytes:
                    f.readline()  # a partial line
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written right now
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_samples(run_dir: os.PathLike, tail_bytes: Optional[int] = None) -> List[dict]:
    """Every rank's samples of a run (of each file's last `tail_bytes` when given), oldest first."""
    d = Path(run_dir) / MONITOR_DIR
    recs = [r for p in sorted(d.glob("rank-*.jsonl")) for r in _read_jsonl(p, tail_bytes)
            if isinstance(r.get("ts"), (int, float)) and isinstance(r.get("rank"), int)]
    return sorted(recs, key=lambda r: r["ts"])


def read_sstat(run_dir: os.PathLike, tail_bytes: Optional[int] = None) -> List[dict]:
    """Slurm's accounting rows recorded by rank 0 (monitor/sstat.jsonl), oldest first."""
    return _read_jsonl(Path(run_dir) / MONITOR_DIR / SSTAT_FILE, tail_bytes)


def read_metrics_tail(run_dir: os.PathLike, tail_bytes: int = 256 * 1024) -> List[dict]:
    """The last records of metrics.jsonl (a live view needs the newest step, not the whole history)."""
    return _read_jsonl(Path(run_dir) / "metrics.jsonl", tail_bytes)


def latest(samples: List[dict]) -> List[dict]:
    """The newest sample of every rank, by rank (a rank that moved to another node after a requeue: its newest)."""
    by_rank: Dict[int, dict] = {}
    for r in samples:
        by_rank[int(r["rank"])] = r
    return [by_rank[k] for k in sorted(by_rank)]


def node_samples(samples: List[dict]) -> Dict[str, List[dict]]:
    """{node: its node-level samples (local rank 0's)}, oldest first."""
    out: Dict[str, List[dict]] = {}
    for r in samples:
        if "cpu_percent" in r:
            out.setdefault(str(r.get("node", "?")), []).append(r)
    return out


# the resource series a plot or summary shows: (key in a sample, title, unit, node-level?)
SERIES: Tuple[Tuple[str, str, str, bool], ...] = (
    ("cpu_percent", "node CPU", "%", True),
    ("mem_used_mb", "node memory used", "MB", True),
    ("net_recv_mb_s", "network received", "MB/s", True),
    ("net_sent_mb_s", "network sent", "MB/s", True),
    ("disk_read_mb_s", "disk read", "MB/s", True),
    ("disk_write_mb_s", "disk written", "MB/s", True),
    ("proc_cpu_percent", "trainer CPU (100 = 1 core)", "%", False),
    ("proc_rss_mb", "trainer resident memory", "MB", False),
)


def series(samples: List[dict], key: str, node_level: bool, t0: Optional[float] = None
           ) -> Dict[str, Tuple[List[float], List[float]]]:
    """{node or "rank R": (seconds since t0, values)} of one metric (GPU metrics: key gpu<i>_util_percent /
    gpu<i>_mem_used_mb)."""
    if not samples:
        return {}
    t0 = samples[0]["ts"] if t0 is None else t0
    out: Dict[str, Tuple[List[float], List[float]]] = {}
    for r in samples:
        if node_level and "cpu_percent" not in r:
            continue
        label = str(r.get("node", "?")) if node_level else f"rank {r['rank']}"
        values: Dict[str, float] = {}
        if key.startswith("gpu") and "_" in key:
            idx, field = key[3:].split("_", 1)
            for g in r.get("gpus") or []:
                if str(g.get("index")) == idx and g.get(field) is not None:
                    values[key] = float(g[field])
        elif r.get(key) is not None:
            values[key] = float(r[key])
        if key in values:
            xs, ys = out.setdefault(label, ([], []))
            xs.append(float(r["ts"]) - t0)
            ys.append(values[key])
    return dict(sorted(out.items(), key=lambda kv: natural_key(kv[0])))


def natural_key(label: str) -> list:
    """"rank 2" before "rank 10", "n2" before "n10"."""
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", label)]


def main_steps(rows: List[dict]) -> List[dict]:
    """sstat rows of the steps that run the trainers: the batch and extern steps only when there is no other (a
    rendered sbatch script runs the trainer in its batch step)."""
    other = [r for r in rows if not str(r.get("step", "")).endswith((".batch", ".extern"))]
    return other or rows


def gpu_keys(samples: List[dict]) -> List[str]:
    """The GPU series present in the samples (gpu<i>_util_percent, gpu<i>_mem_used_mb)."""
    idx = sorted({int(g["index"]) for r in samples for g in (r.get("gpus") or []) if "index" in g})
    return [f"gpu{i}_{f}" for i in idx for f in ("util_percent", "mem_used_mb")]


def monitor_panels(samples: List[dict], records: List[dict], method: str, sstat: Optional[List[dict]] = None
                   ) -> List[Tuple[str, str, dict]]:
    """The PNG's panels over minutes since the first sample: node CPU, trainer CPU, memory, network, disk, GPUs,
    Slurm's accounting (max RSS per task of each trainer step), then the loss (and the method's main series) on the
    same time axis."""
    from hpcft.rundir.metrics_io import METHOD_CURVES

    t0 = samples[0]["ts"]

    def mins(s: dict, suffix: str = "") -> dict:
        return {f"{k}{suffix}": ([x / 60 for x in xs], ys) for k, (xs, ys) in s.items()}

    panels = [("node CPU (all cores)", "%", mins(series(samples, "cpu_percent", True))),
              ("trainer CPU (100 = one core)", "%", mins(series(samples, "proc_cpu_percent", False))),
              ("memory", "MB", {**mins(series(samples, "mem_used_mb", True), " node used"),
                                **mins(series(samples, "proc_rss_mb", False), " trainer RSS")}),
              ("network", "MB/s", {**mins(series(samples, "net_recv_mb_s", True), " received"),
                                   **mins(series(samples, "net_sent_mb_s", True), " sent")}),
              ("disk", "MB/s", {**mins(series(samples, "disk_read_mb_s", True), " read"),
                                **mins(series(samples, "disk_write_mb_s", True), " written")})]
    for key in gpu_keys(samples):
        i, field = key[3:].split("_", 1)
        panels.append((f"GPU {i} {'utilisation' if field == 'util_percent' else 'memory used'}",
                       "%" if field == "util_percent" else "MB", mins(series(samples, key, True))))
    acct: Dict[str, Tuple[List[float], List[float]]] = {}
    for r in main_steps(sstat or []):
        if r.get("max_rss_mb") is not None and r.get("ts") is not None:
            xs, ys = acct.setdefault(f"step {r.get('step')}", ([], []))
            xs.append((float(r["ts"]) - t0) / 60)
            ys.append(float(r["max_rss_mb"]))
    panels.append(("Slurm sstat: max RSS of a task", "MB", acct))
    by_time = {}
    for key, label in METHOD_CURVES.get(method, ())[:1] + (("loss", "loss"),):
        s: Dict[str, Tuple[List[float], List[float]]] = {}  # by the time each value was logged
        for r in records:
            if r.get(key) is None or r.get("time") is None or r.get("type") not in ("train", "eval"):
                continue
            xs, ys = s.setdefault("train" if r["type"] == "train" else str(r.get("split", "eval")), ([], []))
            xs.append((float(r["time"]) - t0) / 60)
            ys.append(float(r[key]))
        if s.get("train"):
            by_time[label] = s
    panels += [(label, label, s) for label, s in by_time.items()]
    return [p for p in panels if p[2]]
