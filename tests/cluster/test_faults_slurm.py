"""Fault-injection suite: real faults injected into real training jobs on the real local Slurm cluster.

Each scenario trains the same tiny LoRA job (300 steps, a checkpoint every 10) through `hpcft submit`, injects one
fault, and checks: the ledger's final state and events, that no checkpoint is corrupt, that the run that continues
reaches the same final step having lost at most the steps since its last checkpoint (none for the warning-signal
cases), and that its final weights equal those of the same job run without interruption (training is deterministic
here: CPU, one thread, fixed seed).

Faults: scancel mid-run; SIGKILL of the trainer while it writes a checkpoint; the time limit with on_timeout=expire
and with on_timeout=requeue; a job past its memory limit, then two `hpcft retry` started at the same moment;
a node marked down under a running job; preemption by a higher-priority QoS.
Jobs of one phase run side by side (the cluster has 4 CPUs) to keep the suite short.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import support
from support import ROOT, hpcft_cli

pytestmark = [pytest.mark.slurm, pytest.mark.train, pytest.mark.slow]

STEPS = 300
TRAIN = ["executor=slurm", "training.sequence_length=64", "training.batch_size=8", f"training.max_steps={STEPS}",
         "training.epochs=100", "training.learning_rate=1e-2", "training.save_strategy=steps",
         "training.save_interval=10", "training.keep_checkpoints=3"]
ENDED = {"success", "error", "stopped", "expired"}
REPORT: dict = {}  # scenario -> figures, printed at the end (README's reliability table)


# --------------------------------------------------------------------------------------------------- helpers

def cli(args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    env.update(env_extra or {})
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def jobs() -> dict:
    r = cli(["list", "--json", "--limit", "1000"])
    assert r.returncode == 0, r.stderr
    return {j["name"]: j for j in json.loads(r.stdout)}


def job(name):
    return jobs()[name]


def submit(name, *overrides, env_extra=None):
    r = cli(["submit", *TRAIN, f"name={name}", *overrides, "--yes"], env_extra=env_extra)
    assert r.returncode == 0, r.stdout + r.stderr
    return job(name)


def wait_for(pred, what, timeout=420, every=2.0, sync=True):
    return support.wait_for(pred, what, timeout, every, before=(lambda: cli(["sync"])) if sync else None)


def wait_state(name, states, timeout=420):
    return wait_for(lambda: (lambda j: j if j["state"] in states else None)(job(name)), f"{name} in {states}",
                    timeout)


def latest_step(out: Path):
    f = out / "checkpoints" / "latest"
    return int(f.read_text().strip().split("-")[1]) if f.is_file() else None


def wait_checkpoint(name, at_least=10, timeout=300):
    out = Path(job(name)["output_dir"])
    return wait_for(lambda: (latest_step(out) or 0) >= at_least and latest_step(out), f"{name} checkpoint",
                    timeout, every=1.0, sync=False)


def slurm_id(name) -> str:
    return job(name)["slurm_job_id"]


def sh(*argv, check=True):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, f"{argv}: {r.stderr}"
    return r.stdout


def start_now_when_pending(sid, timeout=240, node=None):
    """A requeued job waits ~2 min (BeginTime) before it is eligible again: let it start now (as root). A launch
    that fails while the node comes back leaves it held ("launch failed requeued held") and the node drained: as an
    operator would, resume the node and release the job, until it runs again (or has ended)."""
    def pending():
        st = sh("squeue", "-h", "-j", sid, "-o", "%T", check=False).strip()
        return st == "PENDING"
    wait_for(pending, f"Slurm job {sid} pending again", timeout, every=1.0, sync=False)
    time.sleep(4)  # a launch within the second the last run's credential was revoked fails the job (see below)
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = sh("squeue", "-h", "-j", sid, "-o", "%T|%r", check=False).strip()
        if not st.startswith("PENDING"):
            return
        if node and sh("sinfo", "-h", "-n", node, "-o", "%t", check=False).strip() in ("drain", "drng", "down",
                                                                                       "down*", "drain*"):
            sh("scontrol", "update", f"NodeName={node}", "State=RESUME", check=False)
        if "held" in st:
            sh("scontrol", "release", sid, check=False)
        sh("scontrol", "update", f"JobId={sid}", "StartTime=now", check=False)
        time.sleep(3)
    raise AssertionError(f"Slurm job {sid} did not start again: {st}")


def events(name) -> str:
    return cli(["events", str(job(name)["id"])]).stdout


def train_steps(out: Path) -> list:
    from hpcft.rundir.metrics_io import read_metrics

    return [r["step"] for r in read_metrics(out, "train")]


def check_checkpoints(out: Path, finished: bool = True) -> None:
    """No checkpoint is corrupt: `latest` names a complete one, every published one loads; once a run finished, no
    staging dir is left (a fault mid-save may leave one behind until the next start cleans it)."""
    from safetensors.torch import load_file

    root = out / "checkpoints"
    steps = sorted(d for d in root.iterdir() if d.name.startswith("step-") and not d.name.endswith(".tmp"))
    assert steps, f"no checkpoint in {root}"
    for d in steps:
        state = json.loads((d / "state.json").read_text())
        assert state["step"] == int(d.name.split("-")[1])
        assert load_file(str(d / "trainable.safetensors"))
    assert (root / (root / "latest").read_text().strip() / "state.json").is_file()
    if finished:
        assert not [d for d in root.iterdir() if d.name.endswith(".tmp")], "a half-written checkpoint was left"


def steps_lost(out: Path) -> int:
    """Steps trained more than once (work lost to the fault): each redone step appears twice in metrics.jsonl."""
    steps = train_steps(out)
    assert sorted(set(steps)) == list(range(1, STEPS + 1)), "a step is missing"
    return len(steps) - len(set(steps))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job without any fault (in a plain process: same seed, same single thread)."""
    from omegaconf import OmegaConf, open_dict

    import hpcft.jobs.preflight

    out = tmp_path_factory.mktemp("reference")
    cfg = hpcft.jobs.preflight.load([o for o in TRAIN if not o.startswith("executor=")])
    with open_dict(cfg):
        cfg.output_dir = str(out)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    env.update(OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(out / "config.yaml")], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out


def same_weights(out: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(str(out / "final" / "adapter_model.safetensors"))
    b = load_file(str(reference / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, f"final weights differ from the uninterrupted run by {worst}"


def finished_like_reference(name, reference, max_lost):
    j = job(name)
    out = Path(j["output_dir"])
    assert j["state"] == "success", j
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_step"] == STEPS
    check_checkpoints(out)
    lost = steps_lost(out)
    assert lost <= max_lost, f"{lost} steps redone, at most {max_lost} allowed"
    same_weights(out, reference)
    return lost


# --------------------------------------------------------------------------------------------------- phase 1

@pytest.fixture(scope="module")
def phase1(slurm_cluster, hpcft_module_home, reference):
    """Five faulty jobs at once (the cluster has 4 CPUs: the memory one starts when the first one ends)."""
    slow = {"HPCFT_TEST_STEP_DELAY_S": "0.3"}
    submit("f-scancel", env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.15"})
    submit("f-kill-in-save", env_extra={"HPCFT_TEST_CRASH_IN_SAVE": "30"})
    submit("f-expire", "resources.time=2", "resources.signal_grace=45", "resources.on_timeout=expire",
           env_extra=slow)
    submit("f-requeue", "resources.time=2", "resources.signal_grace=45", "resources.on_timeout=requeue",
           "resources.max_requeues=6", env_extra=slow)
    submit("f-oom", "resources.mem=2000M", env_extra={"HPCFT_TEST_ALLOC_AT_STEP": "25:2500"})
    return True


@pytest.fixture(scope="module")
def hpcft_module_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("faults-home")
    old = {k: os.environ.get(k) for k in ("HPCFT_HOME", "HPCFT_DB_URL", "HPCFT_RUNS")}
    os.environ["HPCFT_HOME"] = str(home)
    os.environ.pop("HPCFT_DB_URL", None)
    os.environ.pop("HPCFT_RUNS", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_scancel_mid_run_then_resume(phase1, reference):
    name = "f-scancel"
    at = wait_checkpoint(name)
    sh("scancel", slurm_id(name))
    j = wait_state(name, ENDED)
    assert j["state"] == "stopped", j  # a cancel is a stop, never an error
    out = Path(j["output_dir"])
    check_checkpoints(out, finished=False)
    before = max(train_steps(out))
    last = latest_step(out)
    r = cli(["resume", str(j["id"])])
    assert r.returncode == 0, r.stderr
    wait_state(name, {"success", "error", "expired"})
    lost = finished_like_reference(name, reference, max_lost=before - last)
    assert "running -> stopped" in events(name)
    REPORT[name] = {"checkpoint_at_fault": at, "steps_lost": lost}


def test_sigkill_during_checkpoint_write(phase1, reference):
    name = "f-kill-in-save"
    j = wait_state(name, ENDED)
    assert j["state"] == "error", j
    out = Path(j["output_dir"])
    assert latest_step(out) == 20  # step 30's checkpoint was never published
    assert (out / "checkpoints" / "step-00000030.tmp").is_dir()  # the half-written one is still there ...
    r = cli(["resume", str(j["id"])])
    assert r.returncode == 0, r.stderr
    wait_state(name, {"success", "error", "expired", "stopped"})
    lost = finished_like_reference(name, reference, max_lost=10)  # ... and never read: cleaned, step 21 on redone
    REPORT[name] = {"steps_lost": lost}


def test_time_limit_expire_saves_at_the_warning(phase1, reference):
    name = "f-expire"
    j = wait_state(name, ENDED, timeout=600)
    assert j["state"] == "expired", j
    assert "checkpoint of step" in j["state_reason"] and "hpcft resume" in j["state_reason"]
    out = Path(j["output_dir"])
    ev = events(name)
    # the warning's save: a new checkpoint, or (when the signal came during an interval save) that one
    assert "saved a checkpoint at the time-limit warning" in ev and "running -> expired" in ev
    check_checkpoints(out)
    assert latest_step(out) == max(train_steps(out))  # the warning's checkpoint holds the last step trained
    r = cli(["resume", str(j["id"])])
    assert r.returncode == 0, r.stderr
    wait_state(name, {"success", "error", "expired", "stopped"})
    lost = finished_like_reference(name, reference, max_lost=0)
    REPORT[name] = {"steps_lost": lost}


def test_time_limit_requeue_continues_the_same_job(phase1, reference):
    name = "f-requeue"
    sid = slurm_id(name)
    deadline = time.time() + 900
    pending_since = None
    while time.time() < deadline:  # each time the worker requeues it, let it start soon
        cli(["sync"])
        j = job(name)
        if j["state"] in ENDED:
            break
        st = sh("squeue", "-h", "-j", sid, "-o", "%T|%r", check=False).strip()
        if st.startswith("PENDING") and "BeginTime" in st:
            # Not at once: slurmd refuses a launch within the second its previous run's credential was revoked
            # ("Job credential revoked"), and Slurm then ends the job FAILED. Its own BeginTime (~2 min) exists
            # to avoid exactly that; a few seconds are enough.
            pending_since = pending_since or time.time()
            if time.time() - pending_since >= 4:
                sh("scontrol", "update", f"JobId={sid}", "StartTime=now", check=False)
        else:
            pending_since = None
        time.sleep(2)
    assert j["state"] == "success", j
    assert j["attempt"] == 1  # one ledger job, one attempt: requeues are not retries
    ev = events(name)
    n = ev.count(" requeue ")
    assert n >= 1 and "Slurm restarted the job" in ev, ev
    lost = finished_like_reference(name, reference, max_lost=0)
    REPORT[name] = {"requeues": n, "steps_lost": lost}


def test_memory_limit_then_two_retries_at_once(phase1, reference):
    name = "f-oom"
    j = wait_state(name, ENDED)
    assert j["state"] == "error", j
    assert "memory" in (j["state_reason"] or "").lower(), j["state_reason"]
    out = Path(j["output_dir"])
    check_checkpoints(out, finished=False)
    # two cron runs at the same moment: the job is claimed and resubmitted exactly once
    argv = hpcft_cli() + ["retry", "--oom", "--backoff", "0", "--max-attempts", "3"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCFT_TEST_")}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("1 resubmitted" in o for o, _ in outs) == 1, outs
    j = wait_state(name, {"success", "error", "expired", "stopped"}, timeout=600)
    assert j["attempt"] == 2, j
    assert events(name).count("submitted as Slurm job") == 2
    lost = finished_like_reference(name, reference, max_lost=10)
    REPORT[name] = {"steps_lost": lost, "submissions_by_two_retries": 1}


# --------------------------------------------------------------------------------------------------- phase 2

@pytest.fixture(scope="module")
def phase2(phase1, slurm_cluster):
    for name in ("f-scancel", "f-kill-in-save", "f-expire", "f-requeue", "f-oom"):  # phase 1 has left the cluster
        wait_state(name, ENDED, timeout=900)
    # the preemption test runs first; the node-down job is slow enough to still be running when its turn comes
    submit("f-node-down", "resources.nodelist=n1", env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.4"})
    submit("f-preempted", "resources.nodelist=n2", "resources.qos=preemptible",
           env_extra={"HPCFT_TEST_STEP_DELAY_S": "0.15"})
    return True


def test_preemption_requeues_and_resumes(phase2, reference):
    name = "f-preempted"
    wait_checkpoint(name)
    sid = slurm_id(name)
    blocker = sh("sbatch", "--parsable", "--qos=high", "--nodelist=n2", "--cpus-per-task=2", "--mem=500M",
                 "--job-name=preemptor", "--output=/dev/null", "--wrap=sleep 15").strip().split(";")[0]
    try:
        j = wait_for(lambda: (lambda j: j if j["state"] != "running" else None)(job(name)), "the preemption", 120)
        assert j["state"] == "queued", j
    finally:
        wait_for(lambda: not sh("squeue", "-h", "-j", blocker, check=False).strip(), "the preemptor to end", 120,
                 sync=False)
    start_now_when_pending(sid)
    wait_state(name, ENDED)
    lost = finished_like_reference(name, reference, max_lost=40)
    ev = events(name)
    assert "requeued by Slurm" in ev and "Slurm restarted the job" in ev, ev
    REPORT[name] = {"steps_lost": lost}


def test_node_failure_requeues_and_resumes(phase2, reference):
    name = "f-node-down"
    wait_checkpoint(name)
    sid = slurm_id(name)
    before = max(train_steps(Path(job(name)["output_dir"])))
    sh("scontrol", "update", "NodeName=n1", "State=DOWN", "Reason=hpcft-fault-test")
    try:
        j = wait_for(lambda: (lambda j: j if j["state"] != "running" else None)(job(name)), "the ledger to notice",
                     120)
        assert j["state"] == "queued", j  # requeued by Slurm: never recorded as an error
        out = Path(j["output_dir"])
        check_checkpoints(out, finished=False)
        last = latest_step(out)
    finally:
        sh("scontrol", "update", "NodeName=n1", "State=RESUME", check=False)
    start_now_when_pending(sid, node="n1")
    j = wait_state(name, ENDED)
    lost = finished_like_reference(name, reference, max_lost=max(before - last, 10) + 10)
    ev = events(name)
    # restart 1, or 2 when a relaunch on the node coming back failed first (Slurm then holds and requeues it again)
    assert "requeued by Slurm after node failure" in ev and re.search(r"Slurm restarted the job \(restart \d\)", ev), ev
    REPORT[name] = {"steps_lost": lost}


def test_report(tmp_path_factory):
    """The figures for README's reliability section (printed with -s, and written next to the test's tmp dirs)."""
    text = json.dumps(REPORT, indent=1)
    print("\nfault-injection report:", text)
    (tmp_path_factory.getbasetemp() / "fault-report.json").write_text(text)
    assert REPORT, "no scenario ran"
