"""hpcft's whole path on the real local Slurm cluster: CLI submit -> submitit -> worker -> trainer -> ledger."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from support import hpcft_cli

pytestmark = [pytest.mark.slurm, pytest.mark.train]

FAST = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.learning_rate=0.01",
        "resources.time=00:10:00"]


def run(args, timeout=600, **kw):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          **kw)


def jobs():
    r = run(["list", "--json"])
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_all_ended(ids, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run(["sync"])
        js = [j for j in jobs() if j["id"] in ids]
        if all(j["state"] in ("success", "error", "stopped", "expired") for j in js):
            return js
        time.sleep(2)
    raise AssertionError(f"jobs did not end: {js}")


def test_submit_through_slurm_ends_success(slurm_cluster, hpcft_home):
    r = run(["submit", *FAST, "training.max_steps=8", "--wait"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "would start now" in r.stdout or "would wait" in r.stdout  # the queue-wait line before submitting
    (job,) = jobs()
    assert job["state"] == "success" and job["executor"] == "slurm" and job["slurm_job_id"]
    assert (Path(job["output_dir"]) / "final" / "adapter_model.safetensors").exists()
    again = run(["sync"])  # idempotent: nothing live, nothing changes
    assert again.returncode == 0 and "0 changed" in again.stdout


def test_two_node_deepspeed_zero2_lora(slurm_cluster, hpcft_home):
    r = run(["submit", *FAST, "resources.nodes=2", "resources.tasks_per_node=1", "deepspeed=zero2",
             "training.max_steps=6", "training.monitor_interval=0.5", "--wait"])
    (job,) = jobs()
    out = Path(job["output_dir"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr + (out / "logs" / "rank-1.log").read_text()[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    hashes = summary["param_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]  # both ranks finished with identical weights
    assert (out / "logs" / "rank-1.log").exists()
    show = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "NNodes", "-j", job["slurm_job_id"]],
                          capture_output=True, text=True).stdout.split()
    assert show and show[0] == "2"
    check_two_node_monitoring(job, out)


def check_two_node_monitoring(job, out: Path):
    """hpcft.rundir.monitor sampled both nodes (Slurm's names n1, n2: one host runs both slurmd) and Slurm's sstat;
    `hpcft top` and `hpcft monitor` show them."""
    from hpcft.rundir.monitor import node_samples, read_samples, read_sstat, series

    samples = read_samples(out)
    assert {(r["node"], r["rank"]) for r in samples} == {("n1", 0), ("n2", 1)}, samples[:2]
    nodes = node_samples(samples)
    assert sorted(nodes) == ["n1", "n2"] and all(len(v) >= 2 for v in nodes.values())
    for key in ("cpu_percent", "mem_used_mb", "net_recv_mb_s", "net_sent_mb_s"):
        assert sorted(series(samples, key, True)) == ["n1", "n2"], key
    assert max(max(ys) for _, ys in series(samples, "net_recv_mb_s", True).values()) > 0  # gloo between ranks
    assert min(r["mem_used_mb"] for v in nodes.values() for r in v) > 0
    steps = {r["step"] for r in read_sstat(out)}
    assert f"{job['slurm_job_id']}.0" in steps, steps  # submitit's srun step, which runs the trainers
    top = run(["top", str(job["id"]), "--once"])
    assert top.returncode == 0, top.stderr
    rows = [x.split() for x in top.stdout.splitlines() if x.startswith(("n1 ", "n2 "))]
    assert [(x[0], x[1]) for x in rows] == [("n1", "0"), ("n2", "1")], top.stdout
    assert "step 6" in top.stdout and "Slurm sstat" in top.stdout, top.stdout
    png = out / "monitor-test.png"
    mon = run(["monitor", str(job["id"]), "--png", str(png)])
    assert mon.returncode == 0, mon.stderr
    for title in ("node CPU", "node memory used", "network received", "network sent"):
        assert {x.split()[len(title.split())] for x in mon.stdout.splitlines() if x.startswith(title + " ")} == {
            "n1", "n2"}, (title, mon.stdout)
    assert png.stat().st_size > 10_000


def test_multirun_sweep_is_one_array_and_returns_at_once(slurm_cluster, hpcft_home):
    t0 = time.time()
    fast = [o for o in FAST if not o.startswith("training.learning_rate=")]
    r = run(["submit", "-m", *fast, "training.max_steps=3", "training.learning_rate=1e-3,2e-3,5e-3"])
    submit_s = time.time() - t0
    assert r.returncode == 0, r.stderr
    js = jobs()
    assert len(js) == 3
    assert len({j["array_job_id"] for j in js}) == 1 and js[0]["array_job_id"]
    assert sorted(j["array_task_id"] for j in js) == [0, 1, 2]
    # each point named by its swept value; the array by the sweep's name
    assert sorted(j["name"] for j in js) == ["tiny-lora lr=1e-3", "tiny-lora lr=2e-3", "tiny-lora lr=5e-3"]
    names = set()
    for _ in range(20):  # squeue while it is queued; accounting may first show a placeholder name
        names = set(subprocess.run(["squeue", "-h", "-r", "-o", "%j", "-j", js[0]["array_job_id"]],
                                   capture_output=True, text=True).stdout.split())
        names |= set(subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobName", "-j", js[0]["array_job_id"]],
                                    capture_output=True, text=True).stdout.split())
        if "tiny-lora-sweep" in names:
            break
        time.sleep(0.5)
    assert "tiny-lora-sweep" in names, names
    ended = wait_all_ended({j["id"] for j in js})
    assert [j["state"] for j in ended] == ["success"] * 3, ended
    assert submit_s < 120  # sanity, not a benchmark: submission did not wait for training

    # `hpcft sweep ID` (any point's id names the sweep): the points side by side, best validation loss first
    from hpcft.rundir.metrics_io import read_metrics

    first = min(j["id"] for j in js)
    table = run(["sweep", str(max(j["id"] for j in js))])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"sweep {first}: tiny-lora, 3 points, best first by validation loss (lowest)", lines
    assert lines[1].split() == ["JOB", "lr", "STATE", "STEP", "TRAIN", "LOSS", "BEST", "VAL", "LOSS", "AT", "STEP"]
    rows = [ln.split() for ln in lines[2:5]]
    by_id = {j["id"]: j for j in js}
    best = {}
    for j in js:
        recs = read_metrics(j["output_dir"])
        best[j["id"]] = min(r["loss"] for r in recs if r["type"] == "eval" and r["split"] == "validation")
        assert [r for r in recs if r["type"] == "train"][-1]["step"] == 3
    assert [int(r[0]) for r in rows] == sorted(best, key=best.get)  # best first
    for job_id, lr, state, step, _train_loss, val, _at in rows:
        assert by_id[int(job_id)]["name"] == f"tiny-lora lr={lr}" and state == "success" and step == "3"
        assert float(val) == pytest.approx(best[int(job_id)], abs=1e-4)
    top = min(best, key=best.get)
    assert lines[5].startswith(f"best: job {top} {by_id[top]['name']} (validation loss ")
    listed = run(["sweep"]).stdout.splitlines()
    assert listed[1].split() == [str(first), "tiny-lora", "3", "3", "success"], listed


def test_rendered_script_runs_with_plain_sbatch(slurm_cluster, hpcft_home, tmp_path):
    script = tmp_path / "job.sbatch"
    r = run(["render", *FAST, "training.max_steps=3", "name=rendered-by-admin", "-o", str(script)])
    assert r.returncode == 0, r.stderr
    sub = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=tmp_path)
    assert sub.returncode == 0, sub.stderr
    slurm_id = sub.stdout.strip().split(";")[0]
    deadline = time.time() + 600
    while time.time() < deadline:
        js = [j for j in jobs() if j["slurm_job_id"] == slurm_id]
        if js and js[0]["state"] in ("success", "error"):
            break
        time.sleep(2)
    assert js and js[0]["state"] == "success", js
    assert js[0]["name"] == "rendered-by-admin"
    ev = run(["events", str(js[0]["id"])]).stdout
    assert "registered by a rendered sbatch script" in ev
    ident = json.loads((Path(js[0]["output_dir"]) / "job.json").read_text())  # its identity, as a submit writes it
    assert ident["job_id"] == js[0]["id"] and ident["uuid"]


@pytest.mark.slow
def test_time_limit_and_user_stop_through_hpcft(slurm_cluster, hpcft_home):
    """Through the whole path (submitit keeps the worker alive through SIGTERM): a job past its one-minute limit
    ends expired, a job the user stops ends stopped, never error."""
    long = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.epochs=1000"]
    a = run(["submit", *long, "resources.time=1", "resources.signal_grace=0", "name=past-its-limit"])
    b = run(["submit", *long, "resources.time=10", "name=stopped-by-user"])
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    by_name = {j["name"]: j for j in jobs()}
    ida, idb = by_name["past-its-limit"]["id"], by_name["stopped-by-user"]["id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        run(["sync"])
        if {j["id"]: j["state"] for j in jobs()}[idb] == "running":
            break
        time.sleep(2)
    time.sleep(5)  # let the trainer get going
    assert run(["stop", str(idb)]).returncode == 0
    ended = {j["id"]: j for j in wait_all_ended({ida, idb}, timeout=300)}
    assert ended[idb]["state"] == "stopped", ended[idb]
    assert ended[ida]["state"] == "expired", ended[ida]
    assert "time limit" in ended[ida]["state_reason"]
