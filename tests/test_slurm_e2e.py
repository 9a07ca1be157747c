"""hpcft's whole path on the real local Slurm cluster: CLI submit -> submitit -> worker -> trainer -> ledger."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from conftest import hpcft_cli

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
             "training.max_steps=6", "--wait"])
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


def test_multirun_sweep_is_one_array_and_returns_at_once(slurm_cluster, hpcft_home):
    t0 = time.time()
    r = run(["submit", "-m", *FAST, "training.max_steps=3", "method.lora.rank=4,8"])
    submit_s = time.time() - t0
    assert r.returncode == 0, r.stderr
    js = jobs()
    assert len(js) == 2
    assert len({j["array_job_id"] for j in js}) == 1 and js[0]["array_job_id"]
    assert sorted(j["array_task_id"] for j in js) == [0, 1]
    ended = wait_all_ended({j["id"] for j in js})
    assert [j["state"] for j in ended] == ["success", "success"], ended
    assert submit_s < 120  # sanity, not a benchmark: submission did not wait for training


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
