"""Against the real local Slurm cluster (scripts/slurm-local up): builders, sync, stop, extend, priority, predict.

Jobs are plain `sleep`/`true`/`exit 1` sbatch jobs whose options come from hpcft's builder.
"""

import os
import subprocess
import time
from types import SimpleNamespace

import pytest
from support import ROOT, hpcft_cli

from hpcft.errors import SchedulerError
from hpcft.jobs.executors import slurm as S
from hpcft.ledger.store import Ledger
from hpcft.slurm import commands as C
from hpcft.slurm.sbatch import sbatch_options, to_argv
from hpcft.states import State

pytestmark = pytest.mark.slurm


@pytest.fixture
def cluster(slurm_cluster, tmp_path):  # noqa: F811
    """Submit helper; cancels (and waits out) everything the test submitted."""
    submitted = []

    def submit(resources, command="sleep 300", name="hpcft-test", array=None, policy="qos"):
        opts = sbatch_options(resources, job_name=name, output=str(tmp_path / "%j.out"), array=array,
                              priority_policy=policy)
        out = C.run(["sbatch", "--parsable", *to_argv(opts), "--wrap", command])
        jid = C.parse_sbatch_parsable(out).job_id
        submitted.append(jid)
        return jid

    yield SimpleNamespace(submit=submit, partition=slurm_cluster, tmp=tmp_path)
    if submitted:
        subprocess.run(["scancel", *submitted], capture_output=True)
        wait_until(lambda: not C.run(["squeue", "-h", "-j", ",".join(submitted)]).strip(), 60)


def wait_until(fn, timeout_s, what="condition"):
    """Poll fn until truthy; fail the test (not a timing assertion: a deadline for a hung cluster)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        v = fn()
        if v:
            return v
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def show(jid):
    return S.show_job(jid)


def state(jid):
    return show(jid)["JobState"]


def fill_nodes(cluster, minutes=5):
    """Occupy both nodes whole; returns their job ids once both run."""
    ids = [cluster.submit({"nodelist": n, "exclusive": True, "time": minutes}, name=f"filler-{n}")
           for n in ("n1", "n2")]
    wait_until(lambda: all(state(j) == "RUNNING" for j in ids), 60, "the filler jobs to run")
    return ids


def ledger_job(ledger, jid, state=State.queued, **fields):
    return ledger.create_job(name=f"slurm-{jid}", executor="slurm", state=state.value, slurm_job_id=jid,
                             resources=fields.pop("resources", {}), **fields)


# ------------------------------------------------------------------------------------------------ resources

def test_every_resource_field_is_visible_in_scontrol(cluster):
    jid = cluster.submit({"partition": cluster.partition, "account": "hpcft", "priority": "high",
                          "time": "00:03:00", "nodes": 2, "tasks_per_node": 2, "cpus_per_task": 1,
                          "mem": "100M", "constraint": "cpu", "extra": {"hold": ""}}, name="fields")
    j = show(jid)
    assert j["Partition"] == cluster.partition and j["Account"] == "hpcft" and j["QOS"] == "high"
    assert j["TimeLimit"] == "00:03:00"
    assert j["NumNodes"].startswith("2") and j["NumTasks"] == "4" and j["CPUs/Task"] == "1"
    assert j["MinMemoryNode"] == "100M" and j["Features"] == "cpu" and j["JobName"] == "fields"
    assert j["Reason"] == "JobHeldUser"

    jid2 = cluster.submit({"nodelist": "n2", "exclusive": True, "time": 2, "priority": "low",
                           "extra": {"hold": ""}}, name="fields2")
    j2 = show(jid2)
    assert j2["ReqNodeList"] == "n2" and j2["OverSubscribe"] == "NO" and j2["QOS"] == "low"


def test_constraint_places_the_job_on_the_node_with_the_feature(cluster):
    jid = cluster.submit({"constraint": "fast", "time": 2}, command="sleep 20")
    wait_until(lambda: state(jid) == "RUNNING", 60, "the job to run")
    assert show(jid)["NodeList"] == "n1"


def test_reservation(cluster):
    name = f"hpcft_test_{int(time.time())}"
    C.run(["scontrol", "create", "reservation", f"ReservationName={name}", "Users=root", "StartTime=now",
           "Duration=10", "Nodes=n2", "Flags=IGNORE_JOBS"])
    try:
        jid = cluster.submit({"reservation": name, "time": 1}, command="sleep 5")
        assert show(jid)["Reservation"] == name
        wait_until(lambda: state(jid) in ("RUNNING", "COMPLETED"), 60, "the reserved job to start")
        assert show(jid)["NodeList"] == "n2"
        subprocess.run(["scancel", jid], capture_output=True)
        wait_until(lambda: not C.run(["squeue", "-h", "-j", jid]).strip(), 60, "the job to leave")
    finally:
        subprocess.run(["scontrol", "delete", f"ReservationName={name}"], capture_output=True)


# ------------------------------------------------------------------------------------------------ sync

@pytest.mark.slow
def test_sync_maps_success_error_stopped_expired_with_one_sacct_call(cluster, tmp_path, monkeypatch):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    ok = cluster.submit({"time": 2}, command="true")
    bad = cluster.submit({"time": 2}, command="exit 1")
    arr = cluster.submit({"time": 2}, command="true", array="0-1")
    long = cluster.submit({"time": 2}, command="sleep 300")
    late = cluster.submit({"time": 1}, command="sleep 120")  # TIMEOUT after about a minute
    jobs = {
        "ok": ledger_job(ledger, ok), "bad": ledger_job(ledger, bad), "long": ledger_job(ledger, long),
        "late": ledger_job(ledger, late),
        "a0": ledger_job(ledger, f"{arr}_0", array_job_id=arr, array_task_id=0),
        "a1": ledger_job(ledger, f"{arr}_1", array_job_id=arr, array_task_id=1),
    }
    calls = []
    real_run = C.run
    monkeypatch.setattr(C, "run", lambda argv, timeout=60: (calls.append(argv), real_run(argv, timeout))[1])

    ex = S.SlurmExecutor()
    wait_until(lambda: state(long) == "RUNNING", 60, "the long job to run")

    def long_running_in_accounting():  # slurmdbd may lag squeue by a moment under load: sync until it agrees
        ex.sync(ledger, ledger.search(ids=[j.id for j in jobs.values()]))
        return ledger.get(jobs["long"].id).state == State.running.value

    wait_until(long_running_in_accounting, 60, "accounting to show the long job running")
    ex.stop(ledger, ledger.get(jobs["long"].id))
    assert any(e.kind == "stop" for e in ledger.events(jobs["long"].id))

    def settled():
        live = ledger.live_jobs(executor="slurm")
        ex.sync(ledger, live)
        return not ledger.live_jobs(executor="slurm")

    wait_until(settled, 240, "every job to end")
    got = {k: ledger.get(j.id) for k, j in jobs.items()}
    assert got["ok"].state == "success" and got["a0"].state == "success" and got["a1"].state == "success"
    assert got["bad"].state == "error" and "FAILED" in got["bad"].state_reason and "1:0" in got["bad"].state_reason
    assert got["long"].state == "stopped" and "CANCELLED" in got["long"].state_reason
    assert got["late"].state == "expired" and "time limit" in got["late"].state_reason
    sacct_calls = [a for a in calls if a[0] == "sacct"]
    assert sacct_calls and all(a.count("-j") == 1 for a in sacct_calls)
    # one call covers all the jobs of the first sync
    first = sacct_calls[0][sacct_calls[0].index("-j") + 1].split(",")
    assert set(first) >= {ok, bad, long, late, f"{arr}_0", f"{arr}_1"}
    # idempotent: nothing left to change
    assert ex.sync(ledger, list(got.values())) == 0


def test_stop_pending_job_is_stopped_at_once(cluster, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    jid = cluster.submit({"time": 1, "extra": {"hold": ""}})
    job = ledger_job(ledger, jid)
    S.SlurmExecutor().stop(ledger, job)
    assert ledger.get(job.id).state == "stopped"
    wait_until(lambda: C.parse_sacct(C.run(C.sacct_argv([jid])))[jid].slurm_state == "CANCELLED", 60,
               "Slurm to cancel the job")


# ------------------------------------------------------------------------------------------------ extend, priority

def test_extend_and_set_priority_visible_in_scontrol(cluster, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    jid = cluster.submit({"time": 2, "extra": {"hold": ""}})
    job = ledger_job(ledger, jid, resources={"time": "00:02:00", "priority": "normal"})
    assert S.extend(ledger, job, "00:05:00") == "00:05:00"
    assert show(jid)["TimeLimit"] == "00:05:00"
    job = ledger.get(job.id)
    assert S.extend(ledger, job, "+10") == "00:15:00"
    assert show(jid)["TimeLimit"] == "00:15:00" and ledger.get(job.id).resources["time"] == "00:15:00"

    S.set_priority(ledger, ledger.get(job.id), "high", policy="qos")
    assert show(jid)["QOS"] == "high"
    S.set_priority(ledger, ledger.get(job.id), "low", policy="qos")
    assert show(jid)["QOS"] == "low"
    S.set_priority(ledger, ledger.get(job.id), "low", policy="nice")
    assert show(jid)["Nice"] == "1000"
    kinds = [e.kind for e in ledger.events(job.id)]
    assert kinds.count("extend") == 2 and kinds.count("priority") == 3
    assert ledger.get(job.id).resources["priority"] == "low"


def test_higher_priority_pending_job_starts_first(cluster):
    fillers = fill_nodes(cluster)
    low = cluster.submit({"exclusive": True, "time": 2, "priority": "low"}, name="low")
    time.sleep(1)  # the low one is clearly earlier
    high = cluster.submit({"exclusive": True, "time": 2, "priority": "high"}, name="high")
    assert int(show(high)["Priority"]) > int(show(low)["Priority"])
    C.run(C.scancel_argv([fillers[0]]))
    wait_until(lambda: "RUNNING" in (state(low), state(high)), 60, "a pending job to start")
    assert state(high) == "RUNNING" and state(low) == "PENDING"


def test_equal_priority_stays_fifo(cluster):
    fillers = fill_nodes(cluster)
    first = cluster.submit({"exclusive": True, "time": 2}, name="first")
    time.sleep(1)
    second = cluster.submit({"exclusive": True, "time": 2}, name="second")
    C.run(C.scancel_argv([fillers[1]]))
    wait_until(lambda: "RUNNING" in (state(first), state(second)), 60, "a pending job to start")
    assert state(first) == "RUNNING" and state(second) == "PENDING"


# ------------------------------------------------------------------------------------------------ predict

def test_predict_idle_then_busy(cluster):
    cfg = {"name": "probe", "resources": {"time": 2, "exclusive": True}}
    if not C.run(["squeue", "-h"]).strip():
        assert S.predict(cfg).start_now
    fill_nodes(cluster)
    p = S.predict(cfg)
    assert not p.start_now and p.start_time is not None and "to start at" in p.raw
    before = p.jobs_ahead
    cluster.submit({"exclusive": True, "time": 2, "priority": "high"}, name="ahead")
    cluster.submit({"exclusive": True, "time": 2, "priority": "low"}, name="behind")
    after = S.predict(cfg)  # normal: the high job is ahead, the low one is not
    assert not after.start_now and after.jobs_ahead == before + 1


# ------------------------------------------------------------------------------------------------ executor submit

def test_executor_submits_a_sweep_as_one_array(cluster, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    res = {"time": "00:02:00", "priority": "high", "constraint": "fast|cpu", "extra": {"hold": ""}}
    jobs = []
    for i in range(3):
        out = tmp_path / f"run{i}"
        out.mkdir()
        jobs.append(ledger.create_job(name=f"pt{i}", executor="slurm", resources=res, output_dir=str(out)))
    ex = S.SlurmExecutor(priority_policy="qos")
    got = ex.submit(ledger, jobs)
    arr = got[0].array_job_id
    assert arr and [j.slurm_job_id for j in got] == [f"{arr}_{i}" for i in range(3)]
    assert [j.array_task_id for j in got] == [0, 1, 2]
    assert (tmp_path / f"slurm-array-{jobs[0].id}").is_dir()
    shown = C.parse_show_job(C.run(C.show_job_argv(arr)))
    assert shown[0]["QOS"] == "high" and shown[0]["TimeLimit"] == "00:02:00"
    assert shown[0]["Features"] == "fast|cpu" and shown[0]["ArrayTaskId"].startswith("0-2")
    for j in got:
        ex.stop(ledger, j)
    assert all(ledger.get(j.id).state == "stopped" for j in got)
    subprocess.run(["scancel", arr], capture_output=True)


# ------------------------------------------------------------------------------------------------ rendered script

@pytest.mark.slow
@pytest.mark.train
def test_rendered_script_submitted_with_plain_sbatch_registers_and_succeeds(cluster, tmp_path, monkeypatch):
    from hpcft.config import compose
    from hpcft.jobs.render import render

    monkeypatch.setenv("HPCFT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HPCFT_DB_URL", raising=False)
    cfg = compose.compose(["+experiment=quickstart", "resources=cpu_small", "training.max_steps=2",
                          "training.epochs=1"])
    cfg.name = "rendered 'job' $(touch pwned)"
    cfg.output_dir = str(tmp_path / "run")
    script = tmp_path / "job.sbatch"
    script.write_text(render(cfg))
    out = C.run(["sbatch", "--parsable", str(script)])
    jid = C.parse_sbatch_parsable(out).job_id
    ledger = Ledger()

    def done():
        found = [j for j in ledger.search() if j.slurm_job_id == jid]
        return found and found[0].state in ("success", "error", "expired", "stopped") and found[0]

    job = wait_until(done, 300, "the rendered job to finish")
    assert job.state == "success", job.state_reason
    assert job.name == cfg.name and job.output_dir == str((tmp_path / "run").resolve())
    assert not (tmp_path / "pwned").exists()


def test_stop_of_a_job_that_already_ended_records_how_it_ended(cluster, tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    jid = cluster.submit({"time": 1}, command="true")
    wait_until(lambda: C.parse_sacct(C.run(C.sacct_argv([jid]))).get(jid) and
               C.parse_sacct(C.run(C.sacct_argv([jid])))[jid].slurm_state == "COMPLETED", 60, "the job to end")
    job = ledger_job(ledger, jid, state=State.running)
    S.SlurmExecutor().stop(ledger, job)
    assert ledger.get(job.id).state == "success"


def test_non_operator_cannot_raise_a_running_jobs_time_limit(cluster):
    if subprocess.run(["id", "slurmtest"], capture_output=True).returncode != 0:
        pytest.skip("no unprivileged user `slurmtest` (scripts/slurm-local up creates it)")
    as_user = ["runuser", "-u", "slurmtest", "--"]
    out = C.run([*as_user, "sbatch", "--parsable", "--time=2", "--output=/dev/null", "--chdir=/tmp",
                 "--wrap", "sleep 60"])
    jid = C.parse_sbatch_parsable(out).job_id
    try:
        wait_until(lambda: state(jid) == "RUNNING", 60, "the user's job to run")
        with pytest.raises(SchedulerError) as e:
            C.run([*as_user, *C.update_time_argv(jid, "00:10:00")])
        assert "permission denied" in str(e.value).lower() and "operator/admin" in str(e.value)
        assert show(jid)["TimeLimit"] == "00:02:00"
    finally:
        subprocess.run(["scancel", jid], capture_output=True)


# ------------------------------------------------------------------------------------------ memory estimate

@pytest.mark.slurm
def test_predict_prints_the_memory_estimate(slurm_cluster, hpcft_home):
    env = dict(os.environ, HPCFT_HOME=str(hpcft_home), HF_HUB_OFFLINE="1")
    env.pop("HPCFT_DB_URL", None)
    p = subprocess.run([*hpcft_cli(), "predict", "+experiment=lora_tiny", "resources=cpu_small", f"resources.partition={slurm_cluster}"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("memory: ~") and "per process (CPU)" in p.stdout
    assert "would start now" in p.stdout or "would wait" in p.stdout


# ------------------------------------------------------------------------------------------------ real Slurm requeue

@pytest.mark.slurm
def test_scontrol_requeue_of_a_running_job_syncs_to_queued_never_error(slurm_cluster, tmp_path):
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.slurm import commands as C

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    out = C.run(["sbatch", "--parsable", "--time=3", f"--output={tmp_path}/%j.out", "--wrap", "sleep 300"])
    jid = C.parse_sbatch_parsable(out).job_id
    job = ledger.create_job(name="requeue", executor="slurm", slurm_job_id=jid)
    ex = SlurmExecutor()
    seen = []

    def sync_until(state, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ex.sync(ledger, [ledger.get(job.id)])
            seen.append(ledger.get(job.id).state)
            if seen[-1] == state:
                return
            time.sleep(0.3)
        pytest.fail(f"job {jid} never became {state} in the ledger: {seen[-5:]}")

    try:
        sync_until("running", 90)  # accounting may lag the start
        C.run(["scontrol", "requeue", jid])
        sync_until("queued", 60)
        for _ in range(5):  # and stays there while Slurm holds it (COMPLETING, REQUEUED, PENDING BeginTime)
            ex.sync(ledger, [ledger.get(job.id)])
            seen.append(ledger.get(job.id).state)
            time.sleep(0.3)
        got = ledger.get(job.id)
        assert (got.state, got.state_reason, got.attempt) == ("queued", "requeued by Slurm", 1)
        assert ledger.last_cause(job.id) == "requeued"
        time.sleep(3)  # a launch within the second the last run's credential was revoked would fail the job
        C.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"])  # eligible at once, not in ~2 minutes
        sync_until("running", 90)
        C.run(["scancel", jid])
        sync_until("stopped", 90)
        assert ledger.last_cause(job.id) == "user_stop"
    finally:
        subprocess.run(["scancel", jid], capture_output=True)
    assert "error" not in seen
    moves = [(e.data["from"], e.data["to"]) for e in ledger.events(job.id) if e.kind == "state"]
    assert moves == [("queued", "running"), ("running", "queued"), ("queued", "running"), ("running", "stopped")]
