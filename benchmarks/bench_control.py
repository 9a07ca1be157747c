"""The control plane at scale, side by side in one run (A B A B ..., medians, ratios). Needs the local Slurm
cluster (`scripts/slurm-local up`) for the sync and sweep parts; a throw-away HPCFT_HOME, never ~/.hpcft.

    .venv/bin/python benchmarks/bench_control.py [--jobs 10000] [--repeats 5] [--sweep 100]

1. A ledger of N jobs (bulk inserts with a realistic config JSON per row; 100 of them live on Slurm as a held
   array, the rest finished). `hpcft list` and `hpcft list --json` against `python -c pass`; `hpcft sync` with the
   Slurm commands wrapped by counting shims on PATH: the number of sacct/squeue calls per sync is constant (1 + at
   most 1), not per job.
2. A sweep of S points: one `sbatch --array=0-(S-1)` against S separate `sbatch` calls (trivial held `--wrap`
   jobs, cancelled by id afterwards).
3. Start-up: `hpcft --help`, `hpcft list` (empty ledger), `hpcft submit --dry-run` against `python -c pass`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
# the installed console script; `python -m hpcft` where hpcft is on PYTHONPATH only (a machine without a venv)
HPCFT = [str(VENV_BIN / "hpcft")] if (VENV_BIN / "hpcft").exists() else [sys.executable, "-m", "hpcft"]
SLURM_CMDS = ("sacct", "squeue", "sbatch", "scancel", "scontrol", "sinfo", "sprio", "sshare")


def timed(argv, env) -> float:
    t = time.perf_counter()
    p = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return dt


def side_by_side(cases: dict, env, repeats: int) -> dict:
    """{name: median seconds}, the cases run interleaved A B C A B C ... after one untimed warm-up each."""
    for argv in cases.values():
        timed(argv, env)
    got: dict = {k: [] for k in cases}
    for _ in range(repeats):
        for k, argv in cases.items():
            got[k].append(timed(argv, env))
    return {k: statistics.median(v) for k, v in got.items()}


def shims(d: Path, counter: Path) -> None:
    """Wrappers for the Slurm commands that log their name to `counter`, then run the real one."""
    d.mkdir(parents=True, exist_ok=True)
    for c in SLURM_CMDS:
        real = shutil.which(c)
        if real is None:
            continue
        (d / c).write_text(f'#!/bin/sh\necho {c} >> "{counter}"\nexec {real} "$@"\n')
        (d / c).chmod(0o755)


def sbatch(args: list) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def scancel(ids: list) -> None:
    for i in range(0, len(ids), 500):
        subprocess.run(["scancel", *ids[i:i + 500]], capture_output=True, check=False)


def fill_ledger(n: int, live_array: str | None, n_live: int) -> None:
    """n jobs in the ledger of HPCFT_DB_URL: the first n_live are tasks of `live_array` (running on Slurm), the
    rest finished local jobs. One transaction of bulk inserts (seconds for 10,000)."""
    sys.path.insert(0, str(ROOT))
    from omegaconf import OmegaConf
    from sqlalchemy import insert

    import hpcft.jobs.preflight
    from hpcft.ledger.store import Event, Job, Ledger, utcnow

    cfg = OmegaConf.to_container(hpcft.jobs.preflight.load(["+experiment=quickstart"]), resolve=True)
    led = Ledger()
    now = utcnow()
    rows = []
    for i in range(n):
        live = live_array is not None and i < n_live
        rows.append({"name": f"bench-{i}", "description": "", "owner": led.user, "project": "default",
                     "method": "lora", "state": "running" if live else ("success" if i % 5 else "error"),
                     "executor": "slurm" if live else "local", "config": cfg, "resources": cfg["resources"],
                     "resource_spec": "1x1 cpu1 gpu0 01:00:00 local", "output_dir": f"/tmp/bench/runs/{i}",
                     "slurm_job_id": f"{live_array}_{i}" if live else None,
                     "array_job_id": live_array if live else None, "array_task_id": i if live else None,
                     "attempt": 1, "access": "none", "created_at": now, "submitted_at": now, "started_at": now,
                     "finished_at": None if live else now, "updated_at": now})
    with led._writer.begin() as conn:
        for k in range(0, n, 2000):
            conn.execute(insert(Job), rows[k:k + 2000])
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM jobs ORDER BY id")]
        conn.execute(insert(Event), [{"job_id": j, "kind": "created", "message": "job created", "attempt": 1,
                                      "ts": now, "data": {}} for j in ids])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sweep", type=int, default=100)
    ap.add_argument("--live", type=int, default=100, help="jobs of the ledger live on Slurm (a held array)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hpcft-bench-control-"))
    env = dict(os.environ, HPCFT_HOME=str(tmp / "home"), PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed hpcft has its bytecode cached; without it every
    # command compiles its modules again (~50 ms here), which is not what users run
    env.pop("HPCFT_DB_URL", None)
    os.environ.update(HPCFT_HOME=env["HPCFT_HOME"])
    os.environ.pop("HPCFT_DB_URL", None)
    have_slurm = shutil.which("sbatch") is not None and subprocess.run(
        ["sinfo"], capture_output=True).returncode == 0
    submitted: list = []
    py = sys.executable
    try:
        # ---------------------------------------------------------------- 3. start-up (empty ledger)
        timed([*HPCFT, "list"], env)  # creates the empty ledger
        st = side_by_side({"python -c pass": [py, "-c", "pass"], "hpcft --help": [*HPCFT, "--help"],
                           "hpcft list (empty)": [*HPCFT, "list"],
                           "hpcft submit --dry-run": [*HPCFT, "submit", "--dry-run", "executor=local"]},
                          env, a.repeats)

        # ---------------------------------------------------------------- 1. ledger of N jobs
        live_array = None
        if have_slurm and a.live:
            live_array = sbatch(["--hold", f"--array=0-{a.live - 1}", "--time=1", "--output=/dev/null",
                                 "--job-name=hpcft-bench-live", "--wrap", "true"])
            submitted.append(live_array)
        t = time.perf_counter()
        fill_ledger(a.jobs, live_array, a.live)
        fill_s = time.perf_counter() - t
        ls = side_by_side({"python -c pass": [py, "-c", "pass"], "hpcft list": [*HPCFT, "list"],
                           "hpcft list --json": [*HPCFT, "list", "--json"],
                           "hpcft list --state running": [*HPCFT, "list", "--state", "running"]}, env, a.repeats)
        sync = None
        if have_slurm:
            counter = tmp / "slurm-calls.log"
            shims(tmp / "shims", counter)
            senv = dict(env, PATH=f"{tmp / 'shims'}:{env['PATH']}")
            counts = []
            times = []
            for _ in range(a.repeats):
                counter.write_text("")
                times.append(timed([*HPCFT, "sync"], senv))
                counts.append(counter.read_text().split())
            sync = (statistics.median(times), counts)

        # ---------------------------------------------------------------- 2. sweep: one array vs S sbatch calls
        sweep = None
        if have_slurm:
            base = ["--hold", "--time=1", "--output=/dev/null", "--job-name=hpcft-bench-sweep", "--wrap", "true"]
            ta, ts = [], []
            for _ in range(max(2, a.repeats // 2)):
                t = time.perf_counter()
                submitted.append(sbatch([f"--array=0-{a.sweep - 1}", *base]))
                ta.append(time.perf_counter() - t)
                t = time.perf_counter()
                for _ in range(a.sweep):
                    submitted.append(sbatch(base))
                ts.append(time.perf_counter() - t)
            sweep = (statistics.median(ta), statistics.median(ts))
    finally:
        scancel(submitted)
        shutil.rmtree(tmp, ignore_errors=True)

    # ---------------------------------------------------------------- report
    base = st["python -c pass"]
    print(f"## bench_control ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, medians of {a.repeats}, "
          f"interleaved)\n")
    print("start-up (empty ledger):\n\n| command | median (s) | minus `python -c pass` (s) |\n|---|---|---|")
    for k, v in st.items():
        print(f"| `{k}` | {v:.3f} | {v - base:.3f} |")
    print(f"\nledger of {a.jobs:,} jobs (filled in {fill_s:.1f} s):\n\n| command | median (s) | minus "
          "`python -c pass` (s) |\n|---|---|---|")
    for k, v in ls.items():
        print(f"| `{k}` | {v:.3f} | {v - ls['python -c pass']:.3f} |")
    print(f"\n`hpcft list` at {a.jobs:,} jobs / on an empty ledger: {ls['hpcft list'] / st['hpcft list (empty)']:.2f}x")
    if sync:
        t, counts = sync
        per = [f"{len(c)} ({', '.join(f'{x} {c.count(x)}' for x in sorted(set(c)))})" for c in counts]
        print(f"`hpcft sync` ({a.live} live Slurm jobs in {a.jobs:,}): {t:.3f} s median; Slurm calls per sync: "
              f"{per[0]}" + ("" if len(set(map(len, counts))) == 1 else f" (runs: {[len(c) for c in counts]})"))
    else:
        print("sync and sweep skipped: no Slurm cluster answering (scripts/slurm-local up)")
    if sweep:
        arr, sep = sweep
        print(f"\nsweep of {a.sweep}: one array {arr:.3f} s, {a.sweep} sbatch calls {sep:.3f} s; "
              f"ratio {sep / arr:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
