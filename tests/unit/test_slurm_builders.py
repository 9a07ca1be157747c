"""Pure Slurm builders and parsers: golden sbatch options, hostile values, captured real outputs."""

from datetime import datetime

import pytest
from omegaconf import OmegaConf

from hpcft.errors import ConfigError, SchedulerError
from hpcft.config.schema import ResourcesConfig
from hpcft.slurm import commands as C
from hpcft.slurm.sbatch import priority_options, sbatch_options, to_argv, to_lines
from hpcft.states import State
from support.slurm_fixtures import (QOS_PRIORITY, SACCT_MIXED, SACCT_PENDING_ARRAY, SACCT_RUNNING_PENDING,
                            SHOW_PENDING_ARRAY, SQUEUE_PENDING, TEST_ONLY_NOW, TEST_ONLY_UNLIMITED)

FULL = dict(name="full", nodes=2, gpus_per_node=4, tasks_per_node=4, cpus_per_task=8, mem="64G", time="90",
            partition="gpu", account="proj1", qos=None, priority="high", nodelist="n[1-2]", reservation="maint",
            constraint="fast&cpu", exclusive=True, gpu_directive="gpus-per-node",
            on_timeout="requeue", extra={"mail-type": "END"})

FULL_GOLDEN = """\
#SBATCH --job-name=my_run_x
#SBATCH --array=0-3%2
#SBATCH --output=/runs/7/slurm/%A_%a.out
#SBATCH --error=/runs/7/slurm/%A_%a.err
#SBATCH --partition=gpu
#SBATCH --account=proj1
#SBATCH --qos=high
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --gpus-per-node=4
#SBATCH --mem=64G
#SBATCH --time=01:30:00
#SBATCH --nodelist=n[1-2]
#SBATCH --reservation=maint
#SBATCH --constraint=fast&cpu
#SBATCH --exclusive
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --mail-type=END"""


def test_full_config_golden():
    opts = sbatch_options(OmegaConf.create(FULL), job_name="my run'x", output="/runs/7/slurm/%A_%a.out",
                          error="/runs/7/slurm/%A_%a.err", array="0-3%2", priority_policy="qos")
    assert "\n".join(to_lines(opts)) == FULL_GOLDEN
    argv = to_argv(opts)
    assert argv[0] == "--job-name=my_run_x" and "--exclusive" in argv and "--time=01:30:00" in argv


def test_minimal_config_golden():
    opts = sbatch_options(ResourcesConfig(name="cpu"), priority_policy="qos")
    assert to_lines(opts) == [
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --time=01:00:00",
        "#SBATCH --signal=USR1@120",  # the time-limit warning (resources.signal_grace)
    ]
    assert to_argv(opts) == ["--nodes=1", "--ntasks-per-node=1", "--cpus-per-task=1", "--time=01:00:00",
                             "--signal=USR1@120"]


def test_gres_directive_and_time_normalised():
    opts = sbatch_options({"gpus_per_node": 2, "time": "1-2", "gpu_directive": "gres"})
    assert opts["gres"] == "gpu:2" and "gpus-per-node" not in opts
    assert opts["time"] == "1-02:00:00"


@pytest.mark.parametrize("level,policy,expected", [
    ("low", "qos", {"qos": "low"}), ("normal", "qos", {}), ("high", "qos", {"qos": "high"}),
    ("low", "nice", {"nice": "1000"}), ("normal", "nice", {}), ("high", "nice", {"nice": "-1000"}),
    ("high", "none", {}),
])
def test_priority_policies(level, policy, expected):
    assert priority_options(level, policy) == expected


def test_explicit_qos_wins_over_priority():
    opts = sbatch_options({"priority": "low", "qos": "special"}, priority_policy="qos")
    assert opts["qos"] == "special"
    assert sbatch_options({"priority": "high", "qos": "special"}, priority_policy="nice")["qos"] == "special"


def test_unknown_priority_and_policy_rejected():
    with pytest.raises(ConfigError, match="resources.priority"):
        sbatch_options({"priority": "urgent"})
    with pytest.raises(ConfigError, match="priority policy"):
        sbatch_options({}, priority_policy="lottery")


@pytest.mark.parametrize("key,value", [
    ("partition", "debug\n#SBATCH --qos=high"),
    ("account", "a'b"),
    ("constraint", 'x"y'),
    ("reservation", "$(touch /tmp/pwned)"),
    ("nodelist", "`id`"),
    ("qos", "high;rm -rf /"),
    ("account", "a\\b"),
    ("mem", "4G\r"),
    ("partition", "${HOME}"),
])
def test_hostile_values_rejected_naming_the_key(key, value):
    with pytest.raises(ConfigError) as e:
        sbatch_options({key: value})
    assert f"resources.{key}" in str(e.value)


def test_hostile_extra_value_and_paths_rejected():
    with pytest.raises(ConfigError, match="resources.extra.comment"):
        sbatch_options({"extra": {"comment": "x\n#SBATCH --qos=high"}})
    with pytest.raises(ConfigError, match="output"):
        sbatch_options({}, output="/tmp/$(id)/x.out")


def test_hostile_job_name_is_sanitised_onto_one_line():
    opts = sbatch_options({}, job_name="a\nb'$(touch /tmp/pwned)`x`\"")
    (line,) = [x for x in to_lines(opts) if "job-name" in x]
    assert "\n" not in opts["job-name"] and not set("'\"`$()\n") & set(opts["job-name"])
    assert line.startswith("#SBATCH --job-name=a_b")


def test_extra_option_names_validated():
    with pytest.raises(ConfigError, match="resources.extra.wrap"):
        sbatch_options({"extra": {"wrap": "id"}})
    with pytest.raises(ConfigError, match="resources.time"):  # a managed option must be set where it lives
        sbatch_options({"extra": {"time": "10"}})
    with pytest.raises(ConfigError, match="resources.extra"):
        sbatch_options({"extra": {"--bad name": "1"}})


def test_bad_numbers_time_mem_array():
    with pytest.raises(ConfigError, match="resources.nodes"):
        sbatch_options({"nodes": 0})
    with pytest.raises(ConfigError, match="resources.cpus_per_task"):
        sbatch_options({"cpus_per_task": "two"})
    with pytest.raises(ConfigError, match="resources.time"):
        sbatch_options({"time": "soon"})
    with pytest.raises(ConfigError, match="resources.mem"):
        sbatch_options({"mem": "lots"})
    with pytest.raises(ConfigError, match="array"):
        sbatch_options({}, array="0-3; id")


def test_value_with_space_is_quoted_in_lines_not_in_argv():
    opts = sbatch_options({"extra": {"comment": "two words"}})
    assert '#SBATCH --comment="two words"' in to_lines(opts)
    assert "--comment=two words" in to_argv(opts)


# ------------------------------------------------------------------------------------------------ sacct

def test_sacct_argv_is_one_batched_call():
    argv = C.sacct_argv(["12", "7_1", "7_0", "12"])
    assert argv[0] == "sacct" and argv.count("-j") == 1
    assert argv[argv.index("-j") + 1] == "12,7_0,7_1"
    assert "--parsable2" in argv and "--noheader" in argv and "-X" in argv
    with pytest.raises(ValueError):
        C.sacct_argv([])


def test_parse_sacct_captured_states():
    recs = C.parse_sacct(SACCT_MIXED)
    assert recs["4"].ledger_state == State.success
    assert recs["5"].ledger_state == State.error and recs["5"].exit_code == "3:0"
    assert "exit code 3:0" in recs["5"].ledger_reason
    assert recs["9"].slurm_state == "CANCELLED" and recs["9"].ledger_state == State.stopped
    assert "CANCELLED by 0" in recs["9"].ledger_reason
    assert recs["3"].ledger_state == State.expired and "time limit" in recs["3"].ledger_reason
    assert recs["8"].ledger_state == State.stopped  # cancelled while pending
    assert {k for k in recs if k.startswith("15_")} == {"15_0", "15_1", "15_2", "15_3"}
    assert recs["15_2"].raw_id == "18" and recs["15_2"].ledger_state == State.success
    live = C.parse_sacct(SACCT_RUNNING_PENDING)
    assert live["3"].ledger_state == State.running and live["8"].ledger_state == State.queued


def test_parse_sacct_pending_array_expands_tasks():
    recs = C.parse_sacct(SACCT_PENDING_ARRAY)
    assert sorted(recs) == ["15_0", "15_1", "15_2", "15_3"]
    assert all(r.ledger_state == State.queued for r in recs.values())


@pytest.mark.parametrize("slurm,ledger", [
    ("PENDING", State.queued), ("RUNNING", State.running), ("COMPLETING", State.running),
    ("CONFIGURING", State.running), ("SUSPENDED", State.running), ("COMPLETED", State.success),
    ("CANCELLED by 1000", State.stopped), ("TIMEOUT", State.expired), ("DEADLINE", State.expired),
    ("FAILED", State.error), ("NODE_FAIL", State.error), ("OUT_OF_MEMORY", State.error),
    ("BOOT_FAIL", State.error), ("PREEMPTED", State.error), ("REQUEUED", State.queued),
    ("REQUEUE_HOLD", State.queued), ("RESIZING", State.queued),
])
def test_state_mapping(slurm, ledger):
    rec = C.parse_sacct(f"42|42|{slurm}|0:0|None|00:00:01|Unknown|Unknown|n1\n")["42"]
    assert rec.ledger_state == ledger


def test_unknown_state_maps_to_nothing():
    assert C.parse_sacct("42|42|WEIRD|0:0|None||||\n")["42"].ledger_state is None


def test_expand_array_id():
    assert C.expand_array_id("6_[0-2,5%4]") == ["6_0", "6_1", "6_2", "6_5"]
    assert C.expand_array_id("6_[0-6:3]") == ["6_0", "6_3", "6_6"]
    assert C.expand_array_id("6_1") == ["6_1"]


# ------------------------------------------------------------------------------------------------ predict parts

def test_parse_test_only():
    t = C.parse_test_only(TEST_ONLY_NOW)
    assert t.start_time == datetime(2026, 11, 30, 1, 29, 13) and t.partition == "debug" and t.nodes == "n1"
    assert C.starts_now(t.start_time, datetime(2026, 11, 30, 1, 29, 12))
    assert not C.starts_now(t.start_time, datetime(2026, 11, 30, 1, 20, 0))
    far = C.parse_test_only(TEST_ONLY_UNLIMITED)
    assert far.start_time is None and far.processors == 4 and not C.starts_now(far.start_time, datetime.now())
    with pytest.raises(SchedulerError, match="unexpected"):
        C.parse_test_only("sbatch: error: Batch job submission failed")


def test_jobs_ahead_counts_higher_or_equal_qos_in_partition():
    rows = C.parse_squeue(SQUEUE_PENDING)
    assert rows[0].job_id == "15_[2-3%2]" and rows[0].priority == 100000 and rows[1].qos == "low"
    prio = C.parse_qos_priority(QOS_PRIORITY)
    assert prio == {"normal": 100, "low": 10, "high": 1000}
    assert C.count_jobs_ahead(rows, "debug", "low", prio) == 3  # 2 array tasks + the low job
    assert C.count_jobs_ahead(rows, "debug", "normal", prio) == 2
    assert C.count_jobs_ahead(rows, "debug", "high", prio) == 2
    assert C.count_jobs_ahead(rows, "other", "low", prio) == 0


# ------------------------------------------------------------------------------------------------ scontrol etc.

def test_scontrol_argv():
    assert C.update_time_argv("12_3", "02:00:00") == ["scontrol", "update", "JobId=12_3", "TimeLimit=02:00:00"]
    assert C.update_qos_argv("12", "high") == ["scontrol", "update", "JobId=12", "QOS=high"]
    assert C.update_nice_argv("12", -5) == ["scontrol", "update", "JobId=12", "Nice=-5"]
    assert C.scancel_argv(["1", "2_3"]) == ["scancel", "1", "2_3"]
    assert C.requeue_argv("12") == ["scontrol", "requeue", "12"]


def test_parse_show_job_captured_array():
    jobs = C.parse_show_job(SHOW_PENDING_ARRAY)
    assert [j["JobId"] for j in jobs] == ["15", "17", "16"]
    first = jobs[0]
    assert first["ArrayTaskId"] == "2-3%2" and first["QOS"] == "high" and first["TimeLimit"] == "00:02:00"
    assert first["JobState"] == "PENDING" and first["Reason"] == "JobArrayTaskLimit"
    assert first["Partition"] == "debug" and first["CPUs/Task"] == "1" and first["NodeList"] == ""
    assert first["TRES"] == "cpu=1,mem=4000M,node=1,billing=1" and first["AllocNode:Sid"] == "localhost:3034"


def test_error_message_time_limit_needs_operator():
    msg = C.error_message(C.update_time_argv("5", "10:00:00"),
                          "Access/permission denied for job 130", 1)  # as captured
    assert "Access/permission denied" in msg and "operator/admin" in msg
    plain = C.error_message(["scancel", "5"], "scancel: error: Invalid job id specified\n", 1)
    assert plain == "scancel: error: Invalid job id specified"


def test_run_raises_scheduler_error_with_first_stderr_line(tmp_path):
    with pytest.raises(SchedulerError, match="not found on PATH"):
        C.run(["definitely-not-a-slurm-command-xyz"])
    with pytest.raises(SchedulerError, match="first line"):
        C.run(["sh", "-c", "echo 'first line' >&2; echo second >&2; exit 1"])
    assert C.run(["echo", "ok"]) == "ok\n"


def test_parse_sbatch_parsable():
    assert C.parse_sbatch_parsable("123\n").job_id == "123"
    assert C.parse_sbatch_parsable("123;local\n").cluster == "local"
    with pytest.raises(SchedulerError):
        C.parse_sbatch_parsable("sbatch: error: nope")


# ------------------------------------------------------------------------------------------------ causes, requeue-aware sync

# Captured on the local Slurm 22.05 cluster: `scontrol requeue` of a running `sleep` job, then
# sacct --parsable2 --noheader -X [--duplicates] --format=SACCT_FIELDS -j 1
SACCT_REQUEUED = "1|1|REQUEUED|0:0|None|00:00:03|2026-11-30T14:43:21|2026-11-30T14:43:24|n1\n"
SACCT_REQUEUED_DUPLICATES = ("1|1|REQUEUED|0:0|None|00:00:03|2026-11-30T14:43:21|2026-11-30T14:43:24|n1\n"
                             "1|1|PENDING|0:0|BeginTime|00:00:00|Unknown|Unknown|None assigned\n")
# squeue --noheader --states=all --format=%i|%T|%r -j ...: right after `scontrol requeue 2`, a moment later, a mix
# (4 just completed, 2 requeued, array task 5_1 held, 3 running), a whole pending array, and after scancel
SQUEUE_REQUEUE_COMPLETING = "2|COMPLETING|None\n"
SQUEUE_REQUEUED_PENDING = "2|PENDING|BeginTime\n"
SQUEUE_JOBS = "4|COMPLETED|None\n2|PENDING|BeginTime\n5_1|PENDING|JobHeldUser\n3|RUNNING|None\n"
SQUEUE_ARRAY = "5_[0-2]|PENDING|JobHeldUser\n"
SQUEUE_CANCELLED = "2|CANCELLED|BeginTime\n3|CANCELLED|None\n5_1|CANCELLED|JobHeldUser\n"
# `squeue -j <one id Slurm has forgotten>` exits 1 with this on stderr (several unknown ids: exit 0, no rows)
SQUEUE_INVALID = "slurm_load_jobs error: Invalid job id specified"
# Not reproducible on the shared local cluster (they need a node failure, preemption or OverMemoryKill), written in
# the same format: a node failure then the requeued run (--duplicates), a preemption, a job killed by a signal
# (FAILED 0:9: with no memory-limit message in its output, its worker was lost), a cgroup OOM, a boot failure
SACCT_NODE_FAIL_REQUEUED = ("7|7|NODE_FAIL|0:0|None|00:00:40|2026-11-30T14:50:00|2026-11-30T14:50:40|n1\n"
                            "7|7|PENDING|0:0|BeginTime|00:00:00|Unknown|Unknown|None assigned\n")
SACCT_ENDS = ("7|7|NODE_FAIL|0:0|None|00:00:40|2026-11-30T14:50:00|2026-11-30T14:50:40|n1\n"
              "8|8|PREEMPTED|0:0|None|00:01:00|2026-11-30T14:50:00|2026-11-30T14:51:00|n2\n"
              "9|9|FAILED|0:9|None|00:00:01|2026-11-30T14:50:00|2026-11-30T14:50:01|n1\n"
              "10|10|OUT_OF_MEMORY|0:125|None|00:00:01|2026-11-30T14:50:00|2026-11-30T14:50:01|n1\n"
              "11|11|BOOT_FAIL|0:0|None|00:00:00|2026-11-30T14:50:00|2026-11-30T14:50:00|n2\n")


@pytest.mark.parametrize("state,code,cause", [
    ("NODE_FAIL", "0:0", "node_fail"), ("PREEMPTED", "0:0", "preempted"), ("BOOT_FAIL", "0:0", "boot_fail"),
    ("OUT_OF_MEMORY", "0:125", "oom"), ("FAILED", "0:9", "worker_lost"), ("FAILED", "1:0", "exit:1"),
    ("FAILED", "9:0", "worker_lost"),  # a killed srun task; oom only with Slurm's message (tests/unit/test_causes.py)
    ("FAILED", "2:0", "exit:2"), ("FAILED", "137:0", "exit:137"), ("FAILED", "0:15", "worker_lost"),
    ("CANCELLED by 0", "0:15", "user_stop"), ("TIMEOUT", "0:0", "timeout"), ("DEADLINE", "0:0", "timeout"),
    ("COMPLETED", "0:0", None), ("RUNNING", "0:0", None), ("PENDING", "0:0", None),
])
def test_ledger_cause(state, code, cause):
    rec = C.parse_sacct(f"42|42|{state}|{code}|None|00:00:01|Unknown|Unknown|n1\n")["42"]
    assert rec.ledger_cause == cause


def test_captured_ends_have_causes():
    ends = C.parse_sacct(SACCT_ENDS)
    assert {k: r.ledger_cause for k, r in ends.items()} == {
        "7": "node_fail", "8": "preempted", "9": "worker_lost", "10": "oom", "11": "boot_fail"}
    mixed = C.parse_sacct(SACCT_MIXED)
    assert {k: mixed[k].ledger_cause for k in ("4", "5", "9", "3", "8")} == {
        "4": None, "5": "exit:3", "9": "user_stop", "3": "timeout", "8": "user_stop"}


def test_duplicates_keep_the_newest_run_and_the_one_before():
    assert "--duplicates" in C.sacct_argv(["1"])
    rec = C.parse_sacct(SACCT_REQUEUED_DUPLICATES)["1"]
    assert rec.slurm_state == "PENDING" and rec.previous_state == "REQUEUED"
    assert C.requeue_reason(rec) == ("requeued by Slurm", "requeued")
    nf = C.parse_sacct(SACCT_NODE_FAIL_REQUEUED)["7"]
    assert C.requeue_reason(nf) == ("requeued by Slurm after node failure", "node_fail")
    assert C.parse_sacct(SACCT_REQUEUED)["1"].previous_state == ""


def test_squeue_jobs_argv_and_parser():
    argv = C.squeue_jobs_argv(["7", "5_1", "7"])
    assert argv[:2] == ["squeue", "--noheader"] and "--states=all" in argv and "--format=%i|%T|%r" in argv
    assert argv[argv.index("-j") + 1] == "5_1,7" and argv.count("-j") == 1
    rows = C.parse_squeue_jobs(SQUEUE_JOBS)
    assert {k: r.state for k, r in rows.items()} == {"4": "COMPLETED", "2": "PENDING", "5_1": "PENDING",
                                                     "3": "RUNNING"}
    assert rows["2"].reason == "BeginTime"
    assert sorted(C.parse_squeue_jobs(SQUEUE_ARRAY)) == ["5_0", "5_1", "5_2"]
    assert C.is_invalid_job_id(SchedulerError(f"squeue: {SQUEUE_INVALID}"))
    with pytest.raises(ValueError):
        C.squeue_jobs_argv([])


def _rec(text, jid):
    return C.parse_sacct(text)[jid]


@pytest.mark.parametrize("sacct,jid,ledger,squeue,expected", [
    # scontrol requeue: squeue first says COMPLETING (undecided), then PENDING -> queued, never error
    (SACCT_REQUEUED, "1", "running", "1|COMPLETING|None\n", None),
    (SACCT_REQUEUED, "1", "running", "1|PENDING|BeginTime\n", ("queued", "requeued by Slurm", "requeued")),
    (SACCT_REQUEUED_DUPLICATES, "1", "running", "1|PENDING|BeginTime\n",
     ("queued", "requeued by Slurm", "requeued")),
    (SACCT_REQUEUED, "1", "queued", "1|PENDING|BeginTime\n", None),  # already queued
    (SACCT_REQUEUED, "1", "running", "", None),  # gone: its next sacct row says how it ended
    # node failure / preemption: requeued -> queued with the cause; not held any more -> error with the cause
    (SACCT_NODE_FAIL_REQUEUED, "7", "running", "7|PENDING|BeginTime\n",
     ("queued", "requeued by Slurm after node failure", "node_fail")),
    (SACCT_ENDS, "7", "running", "7|PENDING|BeginTime\n",
     ("queued", "requeued by Slurm after node failure", "node_fail")),
    (SACCT_ENDS, "8", "running", "8|REQUEUED|None\n", ("queued", "requeued by Slurm after preemption", "preempted")),
    (SACCT_ENDS, "7", "running", "", ("error", "Slurm NODE_FAIL, exit code 0:0", "node_fail")),
    (SACCT_ENDS, "8", "queued", "8|PREEMPTED|None\n", ("error", "Slurm PREEMPTED, exit code 0:0", "preempted")),
    (SACCT_ENDS, "7", "running", "7|COMPLETING|None\n", None),
    (SACCT_ENDS, "7", "running", "7|RUNNING|None\n", None),  # already running again: its worker records it
    # accounting lagging behind a start: sacct PENDING, the ledger and squeue say running -> no change
    (SACCT_RUNNING_PENDING, "8", "running", "8|RUNNING|None\n", None),
    (SACCT_RUNNING_PENDING, "8", "running", "8|PENDING|BeginTime\n", ("queued", "requeued by Slurm", "requeued")),
    # plain ends: no squeue needed
    (SACCT_ENDS, "10", "running", None, ("error", "killed for exceeding its memory limit (Slurm OUT_OF_MEMORY, exit "
                                         "code 0:125)", "oom")),
    (SACCT_MIXED, "9", "running", None, ("stopped", "Slurm CANCELLED by 0", "user_stop")),
    (SACCT_MIXED, "5", "running", None, ("error", "Slurm FAILED, exit code 3:0", "exit:3")),
    (SACCT_MIXED, "4", "success", None, None),
])
def test_sync_decision(sacct, jid, ledger, squeue, expected):
    rec = _rec(sacct, jid)
    queue = None if squeue is None else C.parse_squeue_jobs(squeue)
    assert C.needs_queue_check(rec, ledger) == (squeue is not None)
    d = C.sync_decision(rec, ledger, queue)
    assert (None if d is None else (d.state.value, d.reason, d.cause)) == expected


def test_sync_decision_without_squeue_decides_nothing_for_a_maybe_requeued_job():
    assert C.sync_decision(_rec(SACCT_ENDS, "7"), "running", None) is None  # squeue did not answer
    assert C.sync_decision(_rec(SACCT_ENDS, "9"), "running", None).cause == "worker_lost"


def test_executor_sync_with_one_sacct_and_one_squeue_call(tmp_path, monkeypatch):
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.ledger.store import Ledger

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    mixed = "".join(x + "\n" for x in SACCT_MIXED.splitlines() if x.startswith(("4|", "5|")))
    sacct = SACCT_NODE_FAIL_REQUEUED + SACCT_ENDS.split("\n", 1)[1] + mixed
    answers = {"sacct": sacct, "squeue": "7|PENDING|BeginTime\n8|PREEMPTED|None\n"}
    calls = []

    def fake_run(argv, timeout=60):
        calls.append(argv)
        return answers[argv[0]]

    monkeypatch.setattr(C, "run", fake_run)
    jobs = {jid: ledger.create_job(name=f"j{jid}", executor="slurm", state="running", slurm_job_id=jid)
            for jid in ("7", "8", "9", "5", "4")}
    assert SlurmExecutor().sync(ledger, list(jobs.values())) == 5
    assert [a[0] for a in calls] == ["sacct", "squeue"]
    assert calls[1][calls[1].index("-j") + 1] == "7,8"  # only the jobs Slurm may have requeued
    got = {jid: ledger.get(j.id) for jid, j in jobs.items()}
    assert {jid: j.state for jid, j in got.items()} == {"7": "queued", "8": "error", "9": "error", "5": "error",
                                                        "4": "success"}
    assert got["7"].state_reason == "requeued by Slurm after node failure"
    causes = ledger.causes([j.id for j in got.values()])
    assert {jid: causes[j.id] for jid, j in got.items()} == {"7": "node_fail", "8": "preempted", "9": "worker_lost",
                                                             "5": "exit:3", "4": None}

    # squeue refuses a lone forgotten id (exit 1): Slurm holds nothing -> the node failure ends as error
    def refuse(argv, timeout=60):
        if argv[0] == "squeue":
            raise SchedulerError(f"squeue: {SQUEUE_INVALID}")
        return SACCT_ENDS

    monkeypatch.setattr(C, "run", refuse)
    ledger.transition(got["7"].id, State.running, "started again")
    assert SlurmExecutor().sync(ledger, [ledger.get(got["7"].id)]) == 1
    assert ledger.get(got["7"].id).state == "error" and ledger.last_cause(got["7"].id) == "node_fail"

    # squeue not answering at all: nothing is decided for a job that may have been requeued
    other = ledger.create_job(name="j8b", executor="slurm", state="running", slurm_job_id="8")

    def down(argv, timeout=60):
        if argv[0] == "squeue":
            raise SchedulerError("squeue: slurm_load_jobs error: Unable to contact slurm controller")
        return SACCT_ENDS

    monkeypatch.setattr(C, "run", down)
    assert SlurmExecutor().sync(ledger, [other]) == 0 and ledger.get(other.id).state == "running"


def test_warning_grace_default_is_capped_at_half_the_limit():
    from hpcft.slurm.sbatch import warning_grace

    assert warning_grace({"time": "01:00:00"}) == 120
    assert warning_grace({"time": "1"}) == 30
    assert warning_grace({"time": "0:08"}) == 4
    assert warning_grace({"time": "1", "signal_grace": 45}) == 45  # an explicit value wins
    assert warning_grace({"time": "1", "signal_grace": 0}) == 0  # off
    assert "signal" not in sbatch_options({"time": "1", "signal_grace": 0})
    assert sbatch_options({"time": "2"})["signal"] == "USR1@60"
