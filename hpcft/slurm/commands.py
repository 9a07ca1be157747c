"""Slurm commands as pure argv builders and pure output parsers, plus one small runner.

Nothing here formats a shell string: every builder returns an argv list; `run(argv)` executes it without a
shell, with a timeout, and turns a refusal into a SchedulerError carrying Slurm's first stderr line.
Job state is read with ONE batched `sacct` call for any number of jobs (`sacct_argv(ids)`); jobs that Slurm may
have requeued (NODE_FAIL, PREEMPTED, REQUEUED) are checked with ONE batched `squeue` call (`squeue_jobs_argv`), and
`sync_decision` turns both into the ledger's move (state, reason, cause).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from hpcft import exitcodes
from hpcft import states as S
from hpcft.errors import SchedulerError
from hpcft.states import State

# ------------------------------------------------------------------------------------------------ runner

DEFAULT_TIMEOUT_S = 60


def run(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Run a Slurm command (no shell); return its stdout. SchedulerError with Slurm's message on failure."""
    return run_both(argv, timeout)[0]


def run_both(argv: Sequence[str], timeout: float = DEFAULT_TIMEOUT_S) -> Tuple[str, str]:
    """Like run, but returns (stdout, stderr): `sbatch --test-only` answers on stderr."""
    argv = [str(a) for a in argv]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise SchedulerError(f"{argv[0]}: not found on PATH; is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SchedulerError(f"{argv[0]}: no answer from Slurm within {timeout:g} s; try again") from None
    if p.returncode != 0:
        raise SchedulerError(error_message(argv, p.stderr or p.stdout, p.returncode))
    return p.stdout, p.stderr


def error_message(argv: Sequence[str], stderr: str, returncode: int) -> str:
    """One line: the command, Slurm's first stderr line, and what to do where we know it."""
    lines = [x.strip() for x in (stderr or "").splitlines() if x.strip()]
    first = lines[0] if lines else f"exit status {returncode}"
    msg = first if first.startswith(argv[0]) else f"{argv[0]}: {first}"
    denied = re.search(r"access/permission denied|permission denied|not authorized|only .* (root|admin)",
                       first, re.IGNORECASE)
    if denied and any(a.startswith("TimeLimit=") for a in argv):
        msg += " (only a Slurm operator/admin can raise a job's time limit; you may only lower it)"
    elif denied and any(a.startswith(("QOS=", "Nice=")) for a in argv):
        msg += " (this QoS/nice value needs a Slurm operator/admin, or is not allowed for your association)"
    return msg


# ------------------------------------------------------------------------------------------------ sacct

SACCT_FIELDS = ("JobID", "JobIDRaw", "State", "ExitCode", "Reason", "Elapsed", "Start", "End", "NodeList")

# Slurm job states -> ledger states
SLURM_TO_LEDGER: Dict[str, State] = {
    "PENDING": State.queued,
    "REQUEUED": State.queued,
    "REQUEUE_HOLD": State.queued,
    "REQUEUE_FED": State.queued,
    "RESIZING": State.queued,
    "RUNNING": State.running,
    "COMPLETING": State.running,
    "CONFIGURING": State.running,
    "SUSPENDED": State.running,
    "STAGE_OUT": State.running,
    "SIGNALING": State.running,
    "STOPPED": State.running,
    "COMPLETED": State.success,
    "CANCELLED": State.stopped,
    "TIMEOUT": State.expired,
    "DEADLINE": State.expired,
    "FAILED": State.error,
    "NODE_FAIL": State.error,  # unless Slurm requeued it (sync_decision asks squeue)
    "PREEMPTED": State.error,  # idem: PreemptMode=REQUEUE puts it back in the queue, CANCEL ends it
    "OUT_OF_MEMORY": State.error,
    "BOOT_FAIL": State.error,
    "SPECIAL_EXIT": State.error,
    "REVOKED": State.error,
}


@dataclass
class SacctRecord:
    job_id: str  # "123" or "123_4"
    raw_id: str
    slurm_state: str  # first word: CANCELLED for "CANCELLED by 0"
    state_text: str  # as sacct printed it
    exit_code: str  # "code:signal"
    reason: str
    elapsed: str = ""
    start: str = ""
    end: str = ""
    nodelist: str = ""
    previous_state: str = ""  # a requeued job: the state of its previous run's row (NODE_FAIL, PREEMPTED, REQUEUED)
    # what the caller knows beyond sacct (hpcft.jobs.executors.slurm fills them for a FAILED job): the job's output
    # says it exceeded its memory limit (`says_memory_exceeded`); the signal that killed its trainer, as recorded
    # by the job's worker (None: the worker recorded no such end)
    memory_exceeded: bool = False
    trainer_signal: Optional[int] = None

    @property
    def ledger_state(self) -> Optional[State]:
        return SLURM_TO_LEDGER.get(self.slurm_state)

    @property
    def ledger_reason(self) -> str:
        return ledger_reason(self)

    @property
    def ledger_cause(self) -> Optional[str]:
        return slurm_cause(self.slurm_state, self.exit_code, memory_exceeded=self.memory_exceeded,
                           trainer_signal=self.trainer_signal)


def sacct_argv(job_ids: Iterable[str]) -> List[str]:
    """ONE sacct call for all these jobs ("123", array tasks "123_4", whole arrays "123"). `--duplicates` lists
    every run of a requeued job (oldest first): the newest is its state, the one before says why it was requeued."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        raise ValueError("sacct_argv needs at least one job id")
    return ["sacct", "--parsable2", "--noheader", "-X", "--duplicates", "--format=" + ",".join(SACCT_FIELDS),
            "-j", ",".join(ids)]


def expand_array_id(job_id: str) -> List[str]:
    """'6_[0-2,5%4]' -> ['6_0','6_1','6_2','6_5']; other ids unchanged."""
    m = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not m:
        return [job_id]
    base, spec = m.group(1), m.group(2).split("%")[0]
    out: List[str] = []
    for part in spec.split(","):
        step = 1
        if ":" in part:
            part, s = part.split(":", 1)
            step = int(s)
        if "-" in part:
            a, b = part.split("-", 1)
            out += [f"{base}_{i}" for i in range(int(a), int(b) + 1, step)]
        elif part:
            out.append(f"{base}_{int(part)}")
    return out


def parse_sacct(text: str) -> Dict[str, SacctRecord]:
    """`sacct --parsable2 --noheader -X --format=SACCT_FIELDS` output -> {job id: record}. A pending array's
    row ('6_[0-2]') gives one record per task. Later rows (a requeued job's newest) win; the state of the row
    before is kept as `previous_state`."""
    out: Dict[str, SacctRecord] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|")
        parts += [""] * (len(SACCT_FIELDS) - len(parts))
        jid, raw, state, exit_code, reason, elapsed, start, end, nodes = parts[: len(SACCT_FIELDS)]
        words = state.split()
        slurm_state = words[0].rstrip("+") if words else ""
        for one in expand_array_id(jid.strip()):
            before = out[one].slurm_state if one in out else ""
            out[one] = SacctRecord(one, raw, slurm_state, state, exit_code, reason, elapsed, start, end, nodes,
                                   before)
    return out


def parse_exit_code(exit_code: str) -> Tuple[int, int]:
    """sacct's ExitCode 'code:signal' -> (code, signal); anything unreadable counts as 0."""
    code, _, sig = (exit_code or "").partition(":")
    return (int(code) if code.strip().isdigit() else 0, int(sig) if sig.strip().isdigit() else 0)


# A FAILED job's exit code does not tell a memory kill from any other kill: under OverMemoryKill (no cgroups) the
# job's step is SIGKILLed and the job ends FAILED 9:0 (srun's exit code is its task's signal, and a task that exits
# 128+N counts as signal N: hpcft's worker exits 137 after its trainer was SIGKILLed), exactly like a job whose worker
# was `kill -9`ed. What tells them apart: Slurm's message in the job's output (`says_memory_exceeded`) and the
# trainer's end as the worker recorded it (SacctRecord.trainer_signal).
MEMORY_EXCEEDED_RE = re.compile(r"exceeded (?:job |step )?memory limit", re.IGNORECASE)
# srun's exit code when the signal in it killed its task (the worker): a crash or a kill, not an exit of its own
LOST_SIGNALS = frozenset({6, 7, 9, 11, 15})  # SIGABRT, SIGBUS, SIGKILL, SIGSEGV, SIGTERM


def says_memory_exceeded(text: str) -> bool:
    """Slurm's words for a memory-limit kill in a job's output ("slurmstepd: error: Exceeded job memory limit",
    "StepId=5.0 exceeded memory limit (...), being killed")."""
    return bool(MEMORY_EXCEEDED_RE.search(text or ""))


def slurm_cause(slurm_state: str, exit_code: str = "0:0", *, memory_exceeded: bool = False,
                trainer_signal: Optional[int] = None) -> Optional[str]:
    """The ledger cause (hpcft.states) of a Slurm end state: NODE_FAIL -> node_fail, PREEMPTED -> preempted,
    BOOT_FAIL -> boot_fail, OUT_OF_MEMORY -> oom, CANCELLED -> user_stop, TIMEOUT / DEADLINE -> timeout. FAILED:
    oom when the job's output says it exceeded its memory limit (`memory_exceeded`), else signal:N when its worker
    recorded that signal N killed the trainer (`trainer_signal`), else worker_lost when a signal killed the worker
    itself (0:S, or N:0 with N in LOST_SIGNALS: srun's code for its task's signal), else exit:N.
    None for live states and COMPLETED."""
    s = slurm_state
    code, sig = parse_exit_code(exit_code)
    if s == "NODE_FAIL":
        return S.NODE_FAIL
    if s == "PREEMPTED":
        return S.PREEMPTED
    if s == "BOOT_FAIL":
        return S.BOOT_FAIL
    if s == "OUT_OF_MEMORY":
        return S.OOM
    if s in ("FAILED", "SPECIAL_EXIT"):
        if memory_exceeded:
            return S.OOM
        if trainer_signal:
            return f"signal:{int(trainer_signal)}"
        if (code == 0 and sig) or (sig == 0 and code in LOST_SIGNALS):
            return S.WORKER_LOST
        return f"exit:{code}"
    if s == "CANCELLED":
        return S.USER_STOP
    if s in ("TIMEOUT", "DEADLINE"):
        return S.TIMEOUT
    return None


def ledger_reason(rec: SacctRecord) -> str:
    """A short human reason for the ledger, keeping Slurm's words (state, exit code, reason)."""
    s, code = rec.slurm_state, rec.exit_code
    reason = "" if rec.reason in ("", "None") else f", reason {rec.reason}"
    if s == "COMPLETED":
        return "Slurm COMPLETED (exit code 0)"
    if s == "CANCELLED":
        return f"Slurm {rec.state_text}"
    if s in ("TIMEOUT", "DEADLINE"):
        return f"ran past its time limit (Slurm {s})"
    cause = rec.ledger_cause
    if cause == S.OOM:
        return f"killed for exceeding its memory limit (Slurm {s}, exit code {code}{reason})"
    if cause == S.WORKER_LOST:
        return (f"its worker was lost (killed) before it could record the trainer's end (Slurm {s}, exit code "
                f"{code}{reason}); `hpcft retry` resumes it from its checkpoint")
    if rec.trainer_signal and cause == f"signal:{rec.trainer_signal}":
        n = int(rec.trainer_signal)
        return f"trainer killed by signal {n} (exit code {exitcodes.shell_code(-n)}; Slurm {s}, exit code {code}{reason})"
    if SLURM_TO_LEDGER.get(s) == State.error:
        return f"Slurm {s}, exit code {code}{reason}"
    if s == "PENDING":
        return f"Slurm PENDING{reason}"
    return f"Slurm {rec.state_text}{reason}"


# ------------------------------------------------------------------------------------------------ requeue-aware sync

# sacct states after which Slurm may have put the job back in its queue (JobRequeue=1 after a node failure,
# PreemptMode=REQUEUE, `scontrol requeue`): only squeue tells whether it still holds the job
REQUEUE_STATES = frozenset({"NODE_FAIL", "PREEMPTED", "REQUEUED"})
# squeue states of a job Slurm still holds: waiting ...
QUEUE_WAITING = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"})
# ... or running
QUEUE_RUNNING = frozenset({"RUNNING", "CONFIGURING", "SUSPENDED", "SIGNALING", "STOPPED", "STAGE_OUT"})
# COMPLETING (a requeue passes through it, and so does a plain end) and anything unknown: decide at the next sync

_REQUEUE_WHY = {"NODE_FAIL": ("after node failure", S.NODE_FAIL), "PREEMPTED": ("after preemption", S.PREEMPTED),
                "BOOT_FAIL": ("after a node boot failure", S.BOOT_FAIL)}


@dataclass
class Decision:
    """What `sync` records: move the ledger job to `state` with `reason` and `cause`."""

    state: State
    reason: str
    cause: Optional[str] = None


def needs_queue_check(rec: SacctRecord, ledger_state: State | str) -> bool:
    """Ask squeue about this job before deciding: sacct shows a state after which Slurm may have requeued it, or
    PENDING while the ledger says running (a requeue, or accounting lagging behind a start)."""
    return rec.slurm_state in REQUEUE_STATES or (rec.slurm_state == "PENDING" and
                                                 State(ledger_state) == State.running)


def requeue_reason(rec: SacctRecord) -> Tuple[str, str]:
    """(reason, cause) of a job Slurm put back in its queue, from its sacct state or its previous run's state."""
    for s in (rec.slurm_state, rec.previous_state):
        if s in _REQUEUE_WHY:
            why, cause = _REQUEUE_WHY[s]
            return f"requeued by Slurm {why}", cause
    return "requeued by Slurm", S.REQUEUED


def sync_decision(rec: SacctRecord, ledger_state: State | str,
                  queue: Optional[Mapping[str, "QueueState"]] = None) -> Optional[Decision]:
    """The ledger move for one job from its sacct record and, for jobs that `needs_queue_check`, its squeue row
    (`queue`: parsed `squeue_jobs_argv` output; None = squeue not asked or not answering). None: nothing to record
    now. A job Slurm requeued goes back to queued (never error); one it no longer holds ends with the cause."""
    current = State(ledger_state)
    if needs_queue_check(rec, current):
        if queue is None:
            return None  # cannot tell a requeue from an end: the next sync will
        row = queue.get(rec.job_id)
        q = row.state if row else ""
        if q in QUEUE_WAITING:
            if current == State.queued:
                return None
            reason, cause = requeue_reason(rec)
            return Decision(State.queued, reason, cause)
        if q in QUEUE_RUNNING or q == "COMPLETING" or rec.slurm_state in ("REQUEUED", "PENDING"):
            # running again (its worker records that), on its way out or back in, or a REQUEUED/PENDING job gone
            # from squeue (its next sacct row says how it ended): decide at the next sync
            return None
        # NODE_FAIL / PREEMPTED and Slurm no longer holds the job: it ended there
    to = rec.ledger_state
    if to is None or to == current:
        return None
    return Decision(to, rec.ledger_reason, rec.ledger_cause)


def slurm_time(text: str) -> Optional[datetime]:
    """sacct's Start / End ("2025-05-01T09:30:00", in this process's local time, as sacct prints it) -> an aware UTC
    datetime; None for "Unknown", "None" and anything else that is not a time."""
    from datetime import timezone

    try:
        return datetime.fromisoformat((text or "").strip()).astimezone(timezone.utc)
    except ValueError:
        return None


def slurm_times(rec: SacctRecord, to: State | str) -> Dict[str, datetime]:
    """The ledger's started_at / finished_at for a job `sync` moves to `to`: Slurm's Start (running or ended) and
    End (ended), so that elapsed times are Slurm's, not the time until someone asked. Missing ones are left out."""
    to = State(to)
    out: Dict[str, datetime] = {}
    start, end = slurm_time(rec.start), slurm_time(rec.end)
    if start is not None and (to == State.running or S.is_terminal(to)):
        out["started_at"] = start
    if end is not None and S.is_terminal(to):
        out["finished_at"] = end
    return out


def squeue_jobs_argv(job_ids: Iterable[str]) -> List[str]:
    """ONE squeue call for these jobs in any state Slurm still holds (also just-ended ones, for MinJobAge)."""
    ids = sorted({str(j) for j in job_ids if j})
    if not ids:
        raise ValueError("squeue_jobs_argv needs at least one job id")
    return ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", "-j", ",".join(ids)]


@dataclass
class QueueState:
    job_id: str
    state: str  # e.g. PENDING, RUNNING, COMPLETING, CANCELLED
    reason: str  # e.g. BeginTime (a requeued job waits ~2 minutes), Resources, None


def parse_squeue_jobs(text: str) -> Dict[str, QueueState]:
    """`squeue --noheader --format=%i|%T|%r` output -> {job id: row}; a pending array row ('5_[0-2]') gives one
    per task."""
    out: Dict[str, QueueState] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        jid, state, reason = (line.split("|") + ["", ""])[:3]
        for one in expand_array_id(jid.strip()):
            out[one] = QueueState(one, state.strip(), reason.strip())
    return out


# ------------------------------------------------------------------------------------------------ exactly-once submit
# Every submission carries its job's identity to Slurm in --comment ("hpcft:<uuid>", before any comment of the
# user's), so that a sbatch that timed out, or failed without saying whether Slurm took the job, can be settled by
# asking Slurm for that identity: adopt the job it holds, or cancel it when the ledger row has ended meanwhile.

TAG_PREFIX = "hpcft:"
# what sbatch says when it cannot tell whether slurmctld took the job (a stalled or unreachable controller)
AMBIGUOUS = ("timed out", "unable to contact", "no answer from slurm", "zero bytes were transmitted",
             "connection refused", "resource temporarily unavailable", "communication connection failure")


def submission_tag(uuid: str, comment: Optional[str] = None) -> str:
    """The --comment of a submission: its identity, then the user's own comment, if any."""
    tag = f"{TAG_PREFIX}{uuid}"
    return f"{tag} {comment}" if comment else tag


def is_ambiguous(message: str) -> bool:
    """Whether a failed sbatch may have been taken all the same (a timeout, not a refusal)."""
    low = message.lower()
    return any(a in low for a in AMBIGUOUS)


def tagged_jobs_argv(user: str) -> List[str]:
    """ONE squeue call: the user's jobs Slurm holds, one line per array task, with their comments."""
    return ["squeue", "--noheader", "--array", "--states=all", f"--user={user}", "--format=%i|%T|%k"]


def parse_tagged_jobs(text: str) -> Dict[str, List[Tuple[str, str]]]:
    """tagged_jobs_argv's output -> {job identity (uuid): [(Slurm job id, state), ...]} for the jobs hpcft tagged;
    an array's tasks all carry the array's first job's identity, in task order."""
    out: Dict[str, List[Tuple[str, str]]] = {}
    for line in text.splitlines():
        jid, state, comment = (line.split("|", 2) + ["", ""])[:3]
        comment = comment.strip()
        if not comment.startswith(TAG_PREFIX):
            continue
        uuid = comment[len(TAG_PREFIX):].split()[0] if comment[len(TAG_PREFIX):].strip() else ""
        if uuid:
            out.setdefault(uuid, []).append((jid.strip(), state.strip()))
    for rows in out.values():
        rows.sort(key=lambda r: (r[0].split("_")[0], int(r[0].split("_")[1]) if "_" in r[0] and
                                 r[0].split("_")[1].isdigit() else -1))
    return out


def is_invalid_job_id(err: SchedulerError) -> bool:
    """squeue -j with one id Slurm has forgotten exits 1 ('Invalid job id specified'): that means 'not held'."""
    return "invalid job id" in str(err).lower()


# ------------------------------------------------------------------------------------------------ sbatch --test-only

_TEST_ONLY_RE = re.compile(
    r"Job (\d+) to start at (\S+) using (\d+) processors on nodes (\S+) in partition (\S+)")


@dataclass
class TestOnly:
    start_time: Optional[datetime]  # None when Slurm names no usable time (e.g. behind unlimited jobs)
    processors: int
    nodes: str
    partition: str
    raw: str


def test_only_argv(opts_argv: Sequence[str]) -> List[str]:
    return ["sbatch", "--test-only", *opts_argv, "--wrap", "true"]


def parse_test_only(text: str) -> TestOnly:
    """The line `sbatch: Job N to start at T using K processors on nodes X in partition P`."""
    m = _TEST_ONLY_RE.search(text)
    if not m:
        first = next((x.strip() for x in text.splitlines() if x.strip()), "no output")
        raise SchedulerError(f"sbatch --test-only: unexpected answer: {first}")
    _, t, procs, nodes, part = m.groups()
    try:
        start: Optional[datetime] = datetime.fromisoformat(t)
    except ValueError:  # e.g. year 10194: behind jobs without a time limit
        start = None
    return TestOnly(start, int(procs), nodes, part, m.group(0))


def starts_now(start: Optional[datetime], now: datetime, slack_s: float = 5.0) -> bool:
    return start is not None and (start - now).total_seconds() <= slack_s


# ------------------------------------------------------------------------------------------------ squeue / sacctmgr

def squeue_pending_argv(partition: Optional[str] = None) -> List[str]:
    argv = ["squeue", "--noheader", "--states=PENDING", "--format=%i|%P|%Q|%q|%r"]
    if partition:
        argv += ["--partition", partition]
    return argv


@dataclass
class QueueRow:
    job_id: str
    partition: str
    priority: int
    qos: str
    reason: str


def parse_squeue(text: str) -> List[QueueRow]:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = (line.split("|") + [""] * 5)[:5]
        try:
            prio = int(parts[2])
        except ValueError:
            prio = 0
        rows.append(QueueRow(parts[0].strip(), parts[1].strip(), prio, parts[3].strip(), parts[4].strip()))
    return rows


def qos_priority_argv() -> List[str]:
    return ["sacctmgr", "--noheader", "--parsable2", "show", "qos", "format=Name,Priority"]


def parse_qos_priority(text: str) -> Dict[str, int]:
    out = {}
    for line in text.splitlines():
        if "|" in line:
            name, prio = line.split("|")[:2]
            try:
                out[name.strip()] = int(prio or 0)
            except ValueError:
                continue
    return out


def count_jobs_ahead(rows: Sequence[QueueRow], partition: str, my_qos: str, qos_priority: Mapping[str, int]) -> int:
    """Pending jobs in `partition` whose QoS priority is higher than or equal to ours (equal: they came first)."""
    mine = qos_priority.get(my_qos, 0)
    n = 0
    for r in rows:
        parts = r.partition.split(",")
        if partition not in parts:
            continue
        if qos_priority.get(r.qos, 0) >= mine:
            n += sum(1 for _ in expand_array_id(r.job_id))
    return n


# ------------------------------------------------------------------------------------------------ scancel / scontrol

def scancel_argv(job_ids: Iterable[str]) -> List[str]:
    ids = [str(j) for j in job_ids if j]
    if not ids:
        raise ValueError("scancel_argv needs at least one job id")
    return ["scancel", *ids]


def update_time_argv(job_id: str, time_limit: str) -> List[str]:
    return ["scontrol", "update", f"JobId={job_id}", f"TimeLimit={time_limit}"]


def update_qos_argv(job_id: str, qos: str) -> List[str]:
    return ["scontrol", "update", f"JobId={job_id}", f"QOS={qos}"]


def update_nice_argv(job_id: str, nice: int) -> List[str]:
    return ["scontrol", "update", f"JobId={job_id}", f"Nice={int(nice)}"]


def assoc_argv() -> List[str]:
    """Slurm's associations: which users belong to which account (hpcft's projects)."""
    return ["sacctmgr", "--noheader", "--parsable2", "show", "assoc", "format=Account,User"]


def parse_assoc(out: str, skip_accounts: Sequence[str] = ("root",)) -> Dict[str, List[str]]:
    """{account: [users]} from `assoc_argv` output (account-only rows and the `root` account skipped)."""
    members: Dict[str, List[str]] = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or not parts[1] or parts[0] in skip_accounts:
            continue
        members.setdefault(parts[0], [])
        if parts[1] not in members[parts[0]]:
            members[parts[0]].append(parts[1])
    return {k: sorted(v) for k, v in sorted(members.items())}


def requeue_argv(job_id: str) -> List[str]:
    """Put a running job back in the queue (a job's owner may; the job restarts from scratch in Slurm's eyes)."""
    return ["scontrol", "requeue", str(job_id)]


def show_job_argv(job_id: str) -> List[str]:
    return ["scontrol", "show", "job", str(job_id)]


_KV_RE = re.compile(r"([A-Za-z][\w/:.]*)=(.*?)(?=\s+[A-Za-z][\w/:.]*=|\s*$)")


def parse_show_job(text: str) -> List[Dict[str, str]]:
    """`scontrol show job` output -> one dict per job (an array gives several), keys as Slurm prints them."""
    jobs: List[Dict[str, str]] = []
    cur: Dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                jobs.append(cur)
                cur = {}
            continue
        for m in _KV_RE.finditer(line.strip()):
            cur[m.group(1)] = m.group(2).strip()
    if cur:
        jobs.append(cur)
    return jobs


def show_job_oneline_argv(job_id: str) -> List[str]:
    """Slurm's own record of one job, one line (`scontrol show job -o ID`): who it runs as, under which account."""
    return ["scontrol", "show", "job", "-o", str(job_id)]


@dataclass(frozen=True)
class SlurmOwner:
    """Whose a Slurm job is, by Slurm's record: `user` (UserId's name), `uid`, `account`, and the id Slurm shows."""

    job_id: str
    user: str
    uid: Optional[int]
    account: str


_USERID_RE = re.compile(r"^(?P<name>[^()\s]*)(?:\((?P<uid>\d+)\))?$")


def parse_job_owner(text: str) -> Optional[SlurmOwner]:
    """`scontrol show job -o ID` output -> SlurmOwner of its first record (None when there is none or it names no
    user). UserId reads `alice(1001)`; an array's tasks all run as the same user under the same account."""
    records = parse_show_job(text)
    if not records or not records[0].get("UserId"):
        return None
    rec = records[0]
    m = _USERID_RE.match(rec["UserId"])
    name, uid = (m.group("name"), m.group("uid")) if m else (rec["UserId"], None)
    job_id = rec.get("JobId", "")
    if rec.get("ArrayJobId") and rec.get("ArrayTaskId"):
        job_id = f"{rec['ArrayJobId']}_{rec['ArrayTaskId']}"
    return SlurmOwner(job_id=job_id, user=name, uid=int(uid) if uid else None, account=rec.get("Account", ""))


@dataclass
class SubmitResult:
    job_id: str
    cluster: Optional[str] = None


def parse_sbatch_parsable(text: str) -> SubmitResult:
    """`sbatch --parsable` prints `id` or `id;cluster`."""
    line = text.strip().splitlines()[-1] if text.strip() else ""
    jid, _, cluster = line.partition(";")
    if not jid.isdigit():
        raise SchedulerError(f"sbatch: unexpected answer: {line or 'nothing'}")
    return SubmitResult(jid, cluster or None)


# ------------------------------------------------------------------------------------------------ sstat

# Slurm's accounting of a RUNNING job's steps (jobacct_gather): what `hpcft top`/`monitor` show next to hpcft's own
# samples. TRESUsageInTot adds the totals over all tasks (cpu time, memory, disk).
SSTAT_FIELDS = ("JobID", "NTasks", "AveCPU", "AveRSS", "MaxRSS", "MaxRSSNode", "MaxDiskRead", "MaxDiskWrite",
                "TRESUsageInTot")
_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def sstat_argv(job_id: str) -> List[str]:
    """Every running step of one job (`--allsteps`: the batch step and submitit's srun step alike)."""
    return ["sstat", "--allsteps", "--noheader", "--parsable2", "--format=" + ",".join(SSTAT_FIELDS),
            "-j", str(job_id)]


def parse_size_mb(value: str) -> Optional[float]:
    """A Slurm size ("8332K", "1.50M", "2G"; a bare number is bytes) in MiB; None when empty or unreadable."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGTP]?)\s*", value or "")
    if not m:
        return None
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)] / 2**20


def parse_cpu_time_s(value: str) -> Optional[float]:
    """A Slurm cpu time ("MM:SS.mmm", "HH:MM:SS", "D-HH:MM:SS") in seconds; None when empty or unreadable."""
    m = re.fullmatch(r"\s*(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+(?:\.\d+)?)\s*", value or "")
    if not m:
        return None
    days, hours, minutes, seconds = m.groups()
    return int(days or 0) * 86400 + int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)


def parse_sstat(text: str) -> List[Dict[str, object]]:
    """`sstat --parsable2 --noheader --format=SSTAT_FIELDS` -> one dict per step: step, ntasks, ave_cpu_s,
    ave_rss_mb, max_rss_mb, max_rss_node, max_disk_read_mb, max_disk_write_mb, and from TRESUsageInTot
    total_cpu_s, total_mem_mb. A job without running steps prints nothing: []."""
    rows: List[Dict[str, object]] = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < len(SSTAT_FIELDS) or not parts[0].strip():
            continue
        f = dict(zip(SSTAT_FIELDS, (p.strip() for p in parts), strict=False))
        tres = dict(kv.split("=", 1) for kv in f["TRESUsageInTot"].split(",") if "=" in kv)
        rows.append({k: (round(v, 3) if isinstance(v, float) else v) for k, v in {
            "step": f["JobID"],
            "ntasks": int(f["NTasks"]) if f["NTasks"].isdigit() else None,
            "ave_cpu_s": parse_cpu_time_s(f["AveCPU"]),
            "ave_rss_mb": parse_size_mb(f["AveRSS"]),
            "max_rss_mb": parse_size_mb(f["MaxRSS"]),
            "max_rss_node": f["MaxRSSNode"] or None,
            "max_disk_read_mb": parse_size_mb(f["MaxDiskRead"]),
            "max_disk_write_mb": parse_size_mb(f["MaxDiskWrite"]),
            "total_cpu_s": parse_cpu_time_s(tres.get("cpu", "")),
            "total_mem_mb": parse_size_mb(tres.get("mem", "")),
        }.items()})
    return rows
