"""`hpcft sync` reads every live job with ONE sacct call. How much does that save over one call per job?

Side by side in one run on the real cluster: N finished jobs (one array), then the batched read (what hpcft does)
and the per-job read (what a naive loop would do), each repeated; prints the ratio. Needs `scripts/slurm-local up`.

    .venv/bin/python benchmarks/bench_sync.py [N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from hpcft.slurm import commands as C


def main(n: int = 50, repeats: int = 5) -> None:
    out = subprocess.run(["sbatch", "--parsable", f"--array=0-{n - 1}", "--time=1", "--output=/dev/null", "--wrap", "true"],
                         capture_output=True, text=True, check=True).stdout.strip()
    array = out.split(";")[0]
    ids = [f"{array}_{i}" for i in range(n)]
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until every task has ended
        recs = C.parse_sacct(C.run(C.sacct_argv(ids)))
        if len(recs) >= n and all(r.slurm_state == "COMPLETED" for r in recs.values()):
            break
        time.sleep(1)

    def batched():
        return C.parse_sacct(C.run(C.sacct_argv(ids)))

    def per_job():
        got = {}
        for i in ids:
            got.update(C.parse_sacct(C.run(C.sacct_argv([i]))))
        return got

    assert len(batched()) == len(per_job()) == n  # both read the same states
    tb, tp = [], []
    for _ in range(repeats):
        t = time.perf_counter(); batched(); tb.append(time.perf_counter() - t)
        t = time.perf_counter(); per_job(); tp.append(time.perf_counter() - t)
    b, p = statistics.median(tb), statistics.median(tp)
    print(f"jobs: {n}  repeats: {repeats}")
    print(f"batched sacct (1 call):    {b * 1000:8.1f} ms")
    print(f"per-job sacct ({n} calls): {p * 1000:8.1f} ms")
    print(f"ratio per-job / batched:   {p / b:8.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
