"""The web console at scale, side by side with the CLI in one run (A B A B ..., medians). A throw-away HPCFT_HOME,
never ~/.hpcft; no Slurm needed.

    .venv/bin/python benchmarks/bench_console.py [--jobs 10000] [--metrics 100000] [--repeats 7]
                                                 [--watchers 50] [--window 30]

1. A SQLite ledger of N jobs filled directly (bench_control.fill_ledger: bulk inserts, a realistic config per row),
   50 of them `running` on the local executor; job 1's run directory gets a metrics.jsonl of M training lines.
2. `hpcft ui` as users start it; each page fetched over HTTP (the server's time per request, as a client on the
   same machine sees it): the job list (first page of 50, and page 100), the job page of job 1, its metrics
   series; beside them `hpcft list` (50 rows) and `hpcft show 1` as processes.
3. W simulated browsers poll the live endpoint as the job list does (every 2 s, the ids of the 50 running jobs);
   the server's CPU time over the window / the window = its share of one core, and the ledger reads it made.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_control import HPCFT, VENV_BIN, fill_ledger, timed  # noqa: E402


FIRST_READS = (1, 52, 53, 54, 55)  # jobs whose metrics endpoint is read for the first time (not among the watched)


def fill(n: int, metrics: int, out: Path) -> None:
    fill_ledger(n, None, 0)
    from hpcft.ledger.store import Ledger

    led = Ledger()
    run = out / "runs" / "1-bench"
    run.mkdir(parents=True)
    with open(run / "metrics.jsonl", "w") as f:
        for s in range(1, metrics + 1):
            f.write(json.dumps({"type": "train", "step": s, "epoch": s / metrics, "loss": 3.0 / (1 + s / 1000),
                                "lr": 2e-4, "tokens_per_s": 5000.0, "time": 1.7e9 + s}) + "\n")
        f.write(json.dumps({"type": "eval", "split": "validation", "epoch": 1, "step": metrics, "loss": 0.5,
                            "time": 1.7e9 + metrics}) + "\n")
    led.update(1, output_dir=str(run))
    for j in FIRST_READS[1:]:  # the same run under other jobs: each one's first read is a first read
        other = out / "runs" / f"{j}-bench"
        other.mkdir(parents=True)
        os.link(run / "metrics.jsonl", other / "metrics.jsonl")
        led.update(j, output_dir=str(other))
    with led._writer.begin() as conn:  # 50 live jobs for the watchers (local: nothing for Slurm to refresh)
        conn.exec_driver_sql("UPDATE jobs SET state='running', finished_at=NULL WHERE id > 1 AND id <= 51")


def start_ui(env):
    p = subprocess.Popen([*HPCFT, "ui"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = p.stdout.readline().strip()
    m = re.match(r"(http://127\.0\.0\.1:\d+)/\?token=(\S+)", url)
    if not m:
        p.kill()
        raise SystemExit(f"hpcft ui did not print its URL: {url}{p.stdout.read()}")
    return p, m.group(1), m.group(2)


def client(base: str, token: str):
    import httpx

    c = httpx.Client(base_url=base, timeout=60)
    r = c.get(f"/?token={token}", follow_redirects=True)
    r.raise_for_status()
    return c


def get(c, path: str) -> float:
    t = time.perf_counter()
    r = c.get(path)
    dt = time.perf_counter() - t
    if r.status_code != 200:
        raise SystemExit(f"GET {path}: HTTP {r.status_code}: {r.text[:300]}")
    return dt


def pages(c, env, repeats: int, metrics_file: Path) -> dict:
    """{case: median seconds}, interleaved, after one untimed warm-up each."""
    step = [10**9]

    def cold_metrics() -> float:  # a step was logged since the last read: the file is parsed again
        step[0] += 1
        with open(metrics_file, "a") as f:
            f.write(json.dumps({"type": "train", "step": step[0], "loss": 0.1, "time": 1.7e9 + step[0]}) + "\n")
        time.sleep(1.6)  # past the live cache's interval
        return get(c, "/api/job/1/metrics")

    cases = {"console: job list (page 1 of 10,000 jobs)": lambda: get(c, "/"),
             "console: job list (page 100)": lambda: get(c, "/?page=100"),
             "console: job page (100,000 metric lines)": lambda: get(c, "/job/1"),
             "console: its metrics series (JSON, unchanged)": lambda: get(c, "/api/job/1/metrics"),
             "console: its metrics series (JSON, a new line)": cold_metrics,
             "hpcft list (50 rows)": lambda: timed([*HPCFT, "list"], env),
             "hpcft show 1": lambda: timed([*HPCFT, "show", "1"], env)}
    # parses every line: the median over FIRST_READS jobs with the same 100,000-line file, each read once
    first = {"console: its metrics series (JSON, first read)": statistics.median(
        get(c, f"/api/job/{j}/metrics") for j in FIRST_READS)}
    for f in cases.values():
        f()
    got: dict = {k: [] for k in cases}
    for _ in range(repeats):
        for k, f in cases.items():
            got[k].append(f())
    return {**first, **{k: statistics.median(v) for k, v in got.items()}}


def parse_side_by_side(metrics_file: Path, repeats: int) -> dict:
    """The first read's parse, in this process, interleaved: line by line (json.loads per line, as before) against
    hpcft.rundir.metrics_io.parse_lines (orjson), and the panels the endpoint builds."""
    from hpcft.rundir.metrics_io import curve_panels, parse_lines
    from hpcft.web.api import _panels

    lines = metrics_file.read_text().splitlines()

    def per_line():
        return [json.loads(x) for x in lines if x.strip()]

    fast = "parse_lines (orjson, line by line)"
    got: dict = {"json.loads line by line": [], fast: [], "panels (series, thinned)": []}
    for _ in range(repeats):
        for k, f in (("json.loads line by line", per_line), (fast, lambda: parse_lines(lines))):
            t = time.perf_counter()
            recs = f()
            got[k].append(time.perf_counter() - t)
        t = time.perf_counter()
        _panels([(label, label, s) for _, label, s in curve_panels(recs, "lora")])
        got["panels (series, thinned)"].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in got.items()}


def watchers(base: str, token: str, n: int, window: float, server_pid: int) -> dict:
    import psutil

    ids = ",".join(str(i) for i in range(2, 52))
    stop = threading.Event()
    polls = [0]

    def watch():
        c = client(base, token)
        time.sleep(random.uniform(0, 2))
        while not stop.is_set():
            c.get(f"/api/states?ids={ids}").raise_for_status()
            polls[0] += 1
            stop.wait(2.0)

    threads = [threading.Thread(target=watch, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(4)  # all logged in and polling
    proc = psutil.Process(server_pid)
    c0, p0, t0 = sum(proc.cpu_times()[:2]), polls[0], time.monotonic()
    time.sleep(window)
    c1, p1, t1 = sum(proc.cpu_times()[:2]), polls[0], time.monotonic()
    stop.set()
    for t in threads:
        t.join(timeout=10)
    return {"watchers": n, "window_s": t1 - t0, "polls": p1 - p0, "cpu_s": c1 - c0,
            "core_share": (c1 - c0) / (t1 - t0)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--metrics", type=int, default=100000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--watchers", type=int, default=50)
    ap.add_argument("--window", type=float, default=30.0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpcft-bench-console-"))
    env = dict(os.environ, HPCFT_HOME=str(tmp / "home"), PATH=f"{VENV_BIN}:{os.environ['PATH']}",
               HPCFT_STATE_REFRESH="0")
    for k in ("HPCFT_DB_URL", "PYTHONDONTWRITEBYTECODE"):
        env.pop(k, None)
        os.environ.pop(k, None)
    os.environ["HPCFT_HOME"] = env["HPCFT_HOME"]
    t = time.perf_counter()
    fill(a.jobs, a.metrics, tmp / "home")
    print(f"ledger: {a.jobs} jobs, job 1 with {a.metrics} metric lines (filled in {time.perf_counter() - t:.1f} s)")
    p, base, token = start_ui(env)
    try:
        c = client(base, token)
        for k, v in pages(c, env, a.repeats, tmp / "home" / "runs" / "1-bench" / "metrics.jsonl").items():
            print(f"{k:<46} {v * 1000:8.1f} ms")
        side = parse_side_by_side(tmp / "home" / "runs" / "1-bench" / "metrics.jsonl", a.repeats)
        for k, v in side.items():
            print(f"{a.metrics:,} lines: {k:<34} {v * 1000:8.1f} ms")
        print(f"parse_lines / json.loads line by line: {side['parse_lines (orjson, line by line)'] / side['json.loads line by line']:.2f}")
        w = watchers(base, token, a.watchers, a.window, p.pid)
        print(f"{w['watchers']} watchers polling every 2 s for {w['window_s']:.0f} s: {w['polls']} polls, server CPU "
              f"{w['cpu_s']:.2f} s = {w['core_share'] * 100:.1f}% of one core")
    finally:
        p.terminate()
        p.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
