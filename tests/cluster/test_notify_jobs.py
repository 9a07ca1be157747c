"""Notifications end to end: real jobs through the CLI: success, error and a stop on the local executor, a time-limit
expiry on the real local Slurm cluster; the receiver gets exactly one message for each end state and none for the
stop (the ledger hook itself: tests/unit/test_notify.py)."""

import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import hpcft_cli
from support.receiver import closed_port


LOCAL = ["executor=local", "training.sequence_length=64", "training.batch_size=8"]


def cli(args, timeout=300):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def by_name() -> dict:
    r = cli(["list", "--json", "--limit", "100"])
    assert r.returncode == 0, r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}


def submit(*args):
    r = cli(["submit", *args, "--yes"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr


@pytest.mark.train
@pytest.mark.slurm
@pytest.mark.slow
def test_real_jobs_success_error_expired_and_a_stop(slurm_cluster, hpcft_home, tmp_path, receiver):
    """One message each for a local success and a local error (sent by the job's worker) and a Slurm time-limit
    expiry (Slurm kills the job; `sync` records and sends it); none for the stop; a receiver that is down changes
    nothing."""
    down = f"json://127.0.0.1:{closed_port()}/down"
    notify = f"notify.urls=[{receiver.url}]"
    data = tmp_path / "train.jsonl"  # valid at submit, broken before the trainer reads it: a runtime error
    data.write_text('{"prompt": "a", "response": "b"}\n' * 2)

    def submit_local(*args):
        submit(*LOCAL, *args)
        if "name=nt-error" in args:
            data.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n')

    expire = threading.Thread(target=submit, args=(  # Slurm's shortest time limit is a minute: submit it first
        "executor=slurm", "training.sequence_length=64", "training.batch_size=8", "training.epochs=1000",
        "resources.time=1", "resources.signal_grace=0", "name=nt-expire", notify))
    expire.start()
    with ThreadPoolExecutor(3) as pool:  # the local ones side by side
        list(pool.map(lambda args: submit_local(*args), [
            ("training.max_steps=3", "name=nt-success", f"notify.urls=[{receiver.url},{down}]"),
            ("data=custom", f"data.train={data}", "data.format=prompt_response", "name=nt-error", notify),
            ("training.epochs=500", "name=nt-stop", notify)]))
    expire.join()
    deadline = time.time() + 120
    while by_name()["nt-stop"]["state"] != "running":
        assert time.time() < deadline, by_name()["nt-stop"]
        time.sleep(0.5)
    assert cli(["stop", str(by_name()["nt-stop"]["id"])]).returncode == 0

    ended = {"success", "error", "stopped", "expired"}
    deadline = time.time() + 300
    while True:
        assert cli(["sync"]).returncode == 0  # records the Slurm job's TIMEOUT as expired
        jobs = by_name()
        if all(j["state"] in ended for j in jobs.values()):
            break
        assert time.time() < deadline, {n: j["state"] for n, j in jobs.items()}
        time.sleep(2)
    assert cli(["sync"]).returncode == 0
    time.sleep(2)  # a late, second message would arrive now

    states = {n: j["state"] for n, j in jobs.items()}
    assert states == {"nt-expire": "expired", "nt-success": "success", "nt-error": "error", "nt-stop": "stopped"}
    got = {n: receiver.about(j["id"]) for n, j in jobs.items()}
    assert {n: len(m) for n, m in got.items()} == {"nt-expire": 1, "nt-success": 1, "nt-error": 1, "nt-stop": 0}
    (ok,) = got["nt-success"]
    assert "state: success" in ok["message"] and f"outputs: {jobs['nt-success']['output_dir']}" in ok["message"]
    assert float(ok["message"].split("last loss: ")[1].split()[0]) > 0
    assert "state: error" in got["nt-error"][0]["message"] and "train.jsonl:2" in got["nt-error"][0]["message"]
    exp = got["nt-expire"][0]["message"]
    assert "state: expired" in exp and "time limit" in exp and "last loss: none" not in exp
    events = {n: cli(["events", str(j["id"])]).stdout for n, j in jobs.items()}
    assert "notify_failed" in events["nt-success"] and "success" == states["nt-success"]  # the down receiver
    for n in ("nt-error", "nt-expire"):
        assert "notified" in events[n] and "notify_failed" not in events[n], events[n]
    assert "notif" not in events["nt-stop"]
