"""scripts/slurm-local's cluster settings, proven on the real local Slurm 22.05 (`scripts/slurm-local up`):
memory limits enforced without cgroups (a job over its --mem is killed) and a preemptible QoS (its jobs are
requeued when a normal/high job needs their CPUs). Only the job ids these tests submit are cancelled."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm


def sh(*argv: str, check: bool = True) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, f"{argv}: {out.stderr}"
    return out.stdout


def sbatch(*args: str) -> str:
    return sh("sbatch", "--parsable", *args).strip().split(";")[0]


def job_field(jid: str, field: str) -> str:
    m = re.search(rf"\b{field}=(\S*)", sh("scontrol", "show", "job", jid, check=False))
    return m.group(1) if m else ""


def wait_for(what, timeout: float, step: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = what()
        if value:
            return value
        time.sleep(step)
    return what()


@pytest.fixture
def own_jobs():
    """Job ids a test submits; all cancelled afterwards (never anyone else's)."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30)


def test_config_the_daemons_run(slurm_cluster):
    conf = {k.strip(): v.strip() for k, _, v in (x.partition("=") for x in sh("scontrol", "show", "config").splitlines())}
    assert conf["SelectTypeParameters"] == "CR_CPU_MEMORY"
    assert conf["JobAcctGatherParams"] == "OverMemoryKill" and conf["JobAcctGatherFrequency"] == "task=1"
    assert int(conf["DefMemPerCPU"]) > 0
    assert conf["PreemptType"] == "preempt/qos" and conf["PreemptMode"] == "REQUEUE"
    qos = {n: (int(p), pre) for n, p, pre in (x.split("|") for x in
           sh("sacctmgr", "-n", "-P", "show", "qos", "format=name,priority,preempt").split())}
    assert qos["preemptible"][0] < qos["low"][0] < qos["normal"][0] < qos["high"][0]
    assert qos["normal"][1] == qos["high"][1] == "preemptible" and qos["low"][1] == ""
    assert "preemptible" in sh("sacctmgr", "-n", "-P", "show", "assoc", "where", "user=root", "format=qos")
    # `up` restarts the daemons when slurm.conf changed: the hash stored at their start is the current file's
    stored = Path("/var/lib/slurm-local/slurm.conf.sha256")
    if stored.exists():  # a cluster started by this version of scripts/slurm-local
        assert stored.read_text().strip() == hashlib.sha256(Path("/etc/slurm/slurm.conf").read_bytes()).hexdigest()


def test_a_job_without_mem_gets_its_cpus_share_not_the_node(slurm_cluster, own_jobs):
    jid = sbatch("--hold", "--time=1", "--output=/dev/null", "--wrap", "true")
    own_jobs.append(jid)
    per_cpu = job_field(jid, "MinMemoryCPU")
    assert per_cpu.endswith("M") and 0 < int(per_cpu[:-1]) < 4000, per_cpu


def test_a_job_over_its_memory_is_killed(slurm_cluster, own_jobs, tmp_path):
    code = "import time; s = b'x' * (500 << 20); time.sleep(30)"  # 500 MB really touched, --mem=100M
    jid = sbatch("--mem=100M", "--time=1", f"--output={tmp_path}/%j.out", "--wrap", f"{sys.executable} -c \"{code}\"")
    own_jobs.append(jid)

    def ended():
        st = sh("sacct", "-n", "-X", "-P", "-j", jid, "--format=State,ExitCode").strip()
        return st if st.split("|")[0] in ("FAILED", "OUT_OF_MEMORY", "COMPLETED", "CANCELLED") else ""

    state = wait_for(ended, 25)
    assert state.split("|")[0] in ("FAILED", "OUT_OF_MEMORY"), state  # killed in seconds, not after 30 s
    out = wait_for(lambda: (tmp_path / f"{jid}.out").exists() and (tmp_path / f"{jid}.out").read_text(), 5)
    assert "Exceeded job memory limit" in (out or ""), out


def test_a_preemptible_job_is_requeued_for_a_high_job(slurm_cluster, own_jobs, tmp_path):
    # fills both nodes (2 x 2 CPUs and, by DefMemPerCPU, their memory)
    low = sbatch("--qos=preemptible", "--requeue", "--nodes=2", "--ntasks-per-node=2", "--time=2",
                 f"--output={tmp_path}/%j.out", "--wrap", "sleep 120")
    own_jobs.append(low)
    running = wait_for(lambda: job_field(low, "JobState") == "RUNNING", 60)
    assert running, "the preemptible job did not start within 60 s (cluster busy?):\n" + sh("squeue")
    high = sbatch("--qos=high", "--nodes=1", "--ntasks=2", "--time=1", f"--output={tmp_path}/%j.out",
                  "--wrap", "sleep 2")
    own_jobs.append(high)
    assert wait_for(lambda: job_field(high, "JobState") in ("RUNNING", "COMPLETED"), 20), sh("squeue")
    assert int(job_field(low, "Restarts") or 0) >= 1
    assert job_field(low, "JobState") == "PENDING"  # requeued (eligible again after BeginTime)
    def requeued_records():
        states = sh("sacct", "-n", "-X", "-D", "-P", "-j", low, "--format=State").split()
        return [s for s in states if s in ("PREEMPTED", "REQUEUED")]

    assert wait_for(requeued_records, 10), sh("sacct", "-X", "-D", "-j", low)
