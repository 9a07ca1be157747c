"""Captured outputs of the local Slurm 22.05 cluster (scripts/slurm-local) and fixtures for Slurm tests.

The `slurm_cluster` fixture is registered for every test by conftest.py (pytest_plugins); import the captured
outputs from test modules: `from slurm_fixtures import SACCT_MIXED, ...`.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

# sacct --parsable2 --noheader -X --format=JobID,JobIDRaw,State,ExitCode,Reason,Elapsed,Start,End,NodeList -j ...
SACCT_MIXED = '4|4|COMPLETED|0:0|None|00:00:00|2026-11-30T01:29:08|2026-11-30T01:29:08|n1\n5|5|FAILED|3:0|None|00:00:00|2026-11-30T01:29:08|2026-11-30T01:29:08|n2\n6_0|12|COMPLETED|0:0|None|00:00:02|2026-11-30T01:29:08|2026-11-30T01:29:10|n2\n6_1|13|COMPLETED|0:0|None|00:00:02|2026-11-30T01:29:08|2026-11-30T01:29:10|n1\n6_2|6|COMPLETED|0:0|None|00:00:02|2026-11-30T01:29:08|2026-11-30T01:29:10|n2\n9|9|CANCELLED by 0|0:0|None|00:00:06|2026-11-30T01:29:02|2026-11-30T01:29:08|n[1-2]\n3|3|TIMEOUT|0:0|None|00:01:21|2026-11-30T01:29:08|2026-11-30T01:30:29|n1\n7|7|CANCELLED by 0|0:0|None|00:01:15|2026-11-30T01:29:10|2026-11-30T01:30:25|n2\n8|8|CANCELLED by 0|0:0|None|00:00:00|None|2026-11-30T01:30:25|None assigned\n15_0|16|COMPLETED|0:0|None|00:00:01|2026-11-30T01:30:09|2026-11-30T01:30:10|n1\n15_1|17|COMPLETED|0:0|None|00:00:01|2026-11-30T01:30:09|2026-11-30T01:30:10|n2\n15_2|18|COMPLETED|0:0|JobArrayTaskLimit|00:00:01|2026-11-30T01:30:11|2026-11-30T01:30:12|n1\n15_3|15|COMPLETED|0:0|JobArrayTaskLimit|00:00:01|2026-11-30T01:30:11|2026-11-30T01:30:12|n2\n'
SACCT_RUNNING_PENDING = '3|3|RUNNING|0:0|None|00:01:17|2026-11-30T01:29:08|Unknown|n1\n7|7|RUNNING|0:0|None|00:01:15|2026-11-30T01:29:10|Unknown|n2\n8|8|PENDING|0:0|None|00:00:00|Unknown|Unknown|None assigned\n'
SACCT_PENDING_ARRAY = '15_[0-3%2]|15|PENDING|0:0|None|00:00:00|Unknown|Unknown|None assigned\n'
# squeue --noheader --states=PENDING --format=%i|%P|%Q|%q|%r
SQUEUE_PENDING = '15_[2-3%2]|debug|100000|high|JobArrayTaskLimit\n8|debug|1000|low|Resources\n'
# sacctmgr --noheader --parsable2 show qos format=Name,Priority
QOS_PRIORITY = 'normal|100\nlow|10\nhigh|1000\n'
# scontrol show job <pending array>
SHOW_PENDING_ARRAY = 'JobId=15 ArrayJobId=15 ArrayTaskId=2-3%2 ArrayTaskThrottle=2 JobName=wrap\n   UserId=root(0) GroupId=root(0) MCS_label=N/A\n   Priority=100000 Nice=0 Account=hpcft QOS=high\n   JobState=PENDING Reason=JobArrayTaskLimit Dependency=(null)\n   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0\n   RunTime=00:00:00 TimeLimit=00:02:00 TimeMin=N/A\n   SubmitTime=2026-11-30T01:30:09 EligibleTime=Unknown\n   AccrueTime=Unknown\n   StartTime=Unknown EndTime=Unknown Deadline=N/A\n   SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T01:30:09 Scheduler=Backfill:*\n   Partition=debug AllocNode:Sid=localhost:3034\n   ReqNodeList=(null) ExcNodeList=(null)\n   NodeList=\n   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:*\n   TRES=cpu=1,mem=4000M,node=1,billing=1\n   Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*\n   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0\n   Features=(null) DelayBoot=00:00:00\n   OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)\n   Command=(null)\n   WorkDir=/tmp/cap\n   StdErr=/tmp/cap/slurm-15_4294967294.out\n   StdIn=/dev/null\n   StdOut=/tmp/cap/slurm-15_4294967294.out\n   Power=\n   \n\nJobId=17 ArrayJobId=15 ArrayTaskId=1 ArrayTaskThrottle=2 JobName=wrap\n   UserId=root(0) GroupId=root(0) MCS_label=N/A\n   Priority=100000 Nice=0 Account=hpcft QOS=high\n   JobState=RUNNING Reason=None Dependency=(null)\n   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0\n   RunTime=00:00:01 TimeLimit=00:02:00 TimeMin=N/A\n   SubmitTime=2026-11-30T01:30:09 EligibleTime=2026-11-30T01:30:09\n   AccrueTime=Unknown\n   StartTime=2026-11-30T01:30:09 EndTime=2026-11-30T01:32:09 Deadline=N/A\n   SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T01:30:09 Scheduler=Backfill\n   Partition=debug AllocNode:Sid=localhost:3034\n   ReqNodeList=(null) ExcNodeList=(null)\n   NodeList=n2\n   BatchHost=n2\n   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:*\n   TRES=cpu=1,node=1,billing=1\n   Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*\n   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0\n   Features=(null) DelayBoot=00:00:00\n   OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)\n   Command=(null)\n   WorkDir=/tmp/cap\n   StdErr=/tmp/cap/slurm-15_1.out\n   StdIn=/dev/null\n   StdOut=/tmp/cap/slurm-15_1.out\n   Power=\n   \n\nJobId=16 ArrayJobId=15 ArrayTaskId=0 ArrayTaskThrottle=2 JobName=wrap\n   UserId=root(0) GroupId=root(0) MCS_label=N/A\n   Priority=100000 Nice=0 Account=hpcft QOS=high\n   JobState=RUNNING Reason=None Dependency=(null)\n   Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0\n   RunTime=00:00:01 TimeLimit=00:02:00 TimeMin=N/A\n   SubmitTime=2026-11-30T01:30:09 EligibleTime=2026-11-30T01:30:09\n   AccrueTime=Unknown\n   StartTime=2026-11-30T01:30:09 EndTime=2026-11-30T01:32:09 Deadline=N/A\n   SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T01:30:09 Scheduler=Backfill\n   Partition=debug AllocNode:Sid=localhost:3034\n   ReqNodeList=(null) ExcNodeList=(null)\n   NodeList=n1\n   BatchHost=n1\n   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:*\n   TRES=cpu=1,node=1,billing=1\n   Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*\n   MinCPUsNode=1 MinMemoryNode=0 MinTmpDiskNode=0\n   Features=(null) DelayBoot=00:00:00\n   OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)\n   Command=(null)\n   WorkDir=/tmp/cap\n   StdErr=/tmp/cap/slurm-15_0.out\n   StdIn=/dev/null\n   StdOut=/tmp/cap/slurm-15_0.out\n   Power=\n   \n\n'
# Kills, on the local cluster (sacct as above): `srun python -c 'raise SystemExit(-9)'` (27: a worker that exited with
# its trainer's negative return code, 256-9=247, which srun reports as 247-128=119), a task killed by SIGKILL (28: the
# worker `kill -9`ed), a task exiting 137 (29: a worker whose trainer was SIGKILLed), a task past --mem=200M under
# OverMemoryKill (30); the last three read alike: only the job's output tells the memory kill (SLURM_OOM_STDERR)
SACCT_KILLS = ('27|27|FAILED|119:0|None|00:00:00|2026-12-05T23:49:40|2026-12-05T23:49:40|n1\n'
               '28|28|FAILED|9:0|None|00:00:00|2026-12-05T23:49:40|2026-12-05T23:49:40|n2\n'
               '29|29|FAILED|9:0|None|00:00:00|2026-12-05T23:49:40|2026-12-05T23:49:40|n2\n'
               '30|30|FAILED|9:0|None|00:00:01|2026-12-05T23:50:29|2026-12-05T23:50:30|n1\n')
# the stderr of job 30 (sbatch --error) and of its step (srun --error)
SLURM_OOM_STDERR = ('slurmstepd-n1: error: Exceeded job memory limit\n'
                    'srun: Job step aborted: Waiting up to 7 seconds for job step to finish.\n'
                    'slurmstepd-n1: error: Exceeded job memory limit\nsrun: error: n1: task 0: Killed\n')
SLURM_OOM_STEP_STDERR = ('slurmstepd-n1: error: StepId=30.0 exceeded memory limit (642957312 > 209715200), being '
                         'killed\nslurmstepd-n1: error: *** STEP 30.0 ON n1 CANCELLED AT 2026-12-05T23:50:30 ***\n')
SLURM_KILLED_STDERR = 'srun: error: n2: task 0: Killed\nsrun: Force Terminated StepId=28.0\n'
# sbatch --test-only (stderr)
TEST_ONLY_NOW = "sbatch: Job 14 to start at 2026-11-30T01:29:13 using 1 processors on nodes n1 in partition debug\n"
TEST_ONLY_UNLIMITED = ("sbatch: Job 11 to start at 10194-01-14T05:43:02 using 4 processors on nodes n[1-2] "
                       "in partition debug\n")


def cluster_up() -> bool:
    """True when Slurm's tools are on PATH and the controller and accounting answer."""
    if not shutil.which("sinfo") or not shutil.which("sacct"):
        return False
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10)
        if "UP" not in ping.stdout:
            return False
        acct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True,
                              timeout=20)
        return acct.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skip unless a Slurm cluster answers (scripts/slurm-local up); yields the default partition name."""
    if not cluster_up():
        if os.environ.get("HPCFT_REQUIRE_SLURM") == "1":  # scripts/test as root: the cluster must be there
            pytest.fail("HPCFT_REQUIRE_SLURM=1 but no Slurm cluster answers (scripts/slurm-local up failed?)")
        pytest.skip("no Slurm cluster here: start one with `scripts/slurm-local up`")
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=10).stdout.split()
    default = next((p.rstrip("*") for p in out if p.endswith("*")), out[0].rstrip("*") if out else "debug")
    return default
# a dependant of a failed job (sbatch --dependency=afterok:593 after `sbatch --wrap "exit 3"` as 593):
# squeue --noheader --states=all --format=%i|%T|%r -j 593,594, while 593 runs, then once it failed; then the
# dependant cancelled (sacct as above: no start, no node)
SQUEUE_DEPENDENCY_WAITING = '594|PENDING|Dependency\n593|PENDING|None\n'
SQUEUE_DEPENDENCY_NEVER = '593|FAILED|NonZeroExitCode\n594|PENDING|DependencyNeverSatisfied\n'
SACCT_DEPENDANT_CANCELLED = '594|594|CANCELLED by 0|0:0|Dependency|00:00:00|None|2026-12-06T02:21:34|None assigned\n'
