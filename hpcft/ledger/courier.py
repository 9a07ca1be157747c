"""The ledger as a running job sees it: every write goes to the run directory's journal first, then to the database.

`JournaledLedger` stands in for `hpcft.ledger.store.Ledger` in the worker (and the trainer's RunContext): the same
`add_event`, `transition`, `request_done`, `get`, `events`, `open_requests`, so the worker's code reads as before.
A write is appended to the journal (hpcft.rundir.journal, fsync'ed) and then delivered (hpcft.ledger.deliver):
`transition` at once, because the worker acts on its result; events by a courier thread that wakes on every write
and every second (it also carries what the trainer appends). When the database does not answer, nothing fails:
the courier retries with a growing pause (up to `MAX_PAUSE_S`) for as long as the job lives, says so once in the
job's log, and says so again when it answers. At the job's end `close` tries for `linger_s` more
(`HPCFT_JOURNAL_LINGER_S`, default 20 s); what is still undelivered after that waits in the journal for `hpcft sync`
(or `hpcft admin rebuild`), which takes it with the job's true end state and time.

A database that stops answering without refusing (a network partition, a frozen server) is the same outage: every
call to it is made on a thread of its own and waited for at most `wait_s` (`HPCFT_LEDGER_WAIT_S`, default 15 s), one
call at a time, so the worker's own steps (its start, the stop-request poll, the job's end) never hang on it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, List, Optional

from hpcft.rundir import journal
from hpcft.states import State

MAX_PAUSE_S = 30.0
POLL_S = 1.0


def _seconds(var: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(var, default)))
    except ValueError:
        return default


def linger_default() -> float:
    return _seconds("HPCFT_JOURNAL_LINGER_S", 20.0)


def wait_default() -> float:
    return _seconds("HPCFT_LEDGER_WAIT_S", 15.0)


class NoAnswer(Exception):
    """The database did not answer a call within its bound (it may still, later: the call goes on behind)."""


class Bounded:
    """Calls to the database, one at a time, each waited for at most `wait_s`. A call that does not return in time
    goes on in the background; until it does, the next call waits for it (within its own bound) and then fails with
    NoAnswer, so a hung database costs a caller `wait_s` and leaves at most one thread behind."""

    def __init__(self, wait_s: Optional[float] = None) -> None:
        self.wait_s = wait_default() if wait_s is None else wait_s
        self._slot = threading.Lock()  # held by the call in flight; released by its thread when it returns

    def __call__(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        deadline = time.monotonic() + self.wait_s
        if not self._slot.acquire(timeout=self.wait_s):
            raise NoAnswer(f"an earlier call has waited more than {self.wait_s:g} s for the database")
        box: dict = {}
        done = threading.Event()

        def run() -> None:
            try:
                box["value"] = fn(*args, **kw)
            except BaseException as e:  # handed to the caller, if it still waits
                box["error"] = e
            finally:
                self._slot.release()
                done.set()

        threading.Thread(target=run, name="hpcft-ledger-call", daemon=True).start()
        if not done.wait(max(0.0, deadline - time.monotonic())):
            raise NoAnswer(f"no answer from the database within {self.wait_s:g} s")
        if "error" in box:
            raise box["error"]
        return box["value"]


def _say(msg: str) -> None:
    print(f"[hpcft] note: {msg}", flush=True)


class JournaledLedger:
    def __init__(self, url: str, job_id: int, run_dir: os.PathLike, job: Any = None) -> None:
        self.url, self.job_id, self.run_dir = url, int(job_id), Path(run_dir)
        self._job = job
        self._ledger: Any = None
        self._seq = 0  # the ledger's journal_seq as last seen
        self._changed: set = set()  # seqs of the state records whose change a delivery of this process applied
        self._lock = threading.Lock()  # one delivery at a time in this process
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.down: Optional[str] = None  # why the ledger is unreachable, while it is
        self.call = Bounded()  # every database call of this object goes through it

    # ---------------------------------------------------------------------------------------- the database
    @property
    def ledger(self) -> Any:
        if self._ledger is None:
            from hpcft.ledger.store import Ledger

            self._ledger = Ledger(self.url)
        return self._ledger

    def deliver_now(self) -> Any:
        """Deliver what the journal holds beyond the ledger's `journal_seq`; the Delivered, or None when the
        ledger could not be reached (nothing is lost: the records stay in the journal)."""
        from hpcft.ledger.deliver import Delivered, deliver

        with self._lock:
            newest = journal.last_seq(self.run_dir)
            if self._seq and newest <= self._seq and self.down is None:
                return Delivered(seq=self._seq)
            try:
                out = self.call(lambda: deliver(self.ledger, self.job_id, self.run_dir))
            except Exception as e:  # the database down, a failover, a network blip: keep the journal, go on
                if self.down is None:
                    self.down = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    _say(f"the ledger is unreachable ({self.down}); the job goes on and its events wait in "
                         f"{journal.journal_path(self.run_dir)} until it answers")
                return None
            if self.down is not None:
                _say(f"the ledger answers again: the journal is delivered up to record {out.seq}")
                self.down = None
            self._seq = out.seq
            self._changed.update(r["seq"] for r in out.changes)
            return out

    # ---------------------------------------------------------------------------------------- the courier
    def start(self) -> "JournaledLedger":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hpcft-courier", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        pause = POLL_S
        while not self._stop.is_set():
            self._wake.wait(pause)
            self._wake.clear()
            if self._stop.is_set():
                return
            pause = POLL_S if self.deliver_now() is not None else min(MAX_PAUSE_S, max(2.0, pause * 2))

    def close(self, linger_s: Optional[float] = None) -> bool:
        """Stop the courier and deliver what is left, trying for up to `linger_s` seconds; True when the ledger
        has the whole journal."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        deadline = time.monotonic() + (linger_default() if linger_s is None else linger_s)
        while True:
            out = self.deliver_now()
            if out is not None and out.seq >= journal.last_seq(self.run_dir):
                return True
            if time.monotonic() >= deadline:
                _say(f"the ledger did not answer: `hpcft sync` takes the rest of {journal.journal_path(self.run_dir)}")
                return False
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    # ---------------------------------------------------------------------------------------- writes
    def _attempt(self) -> dict:
        return {"attempt": int(self._job.attempt)} if getattr(self._job, "attempt", None) else {}

    def _append(self, op: str, **fields: Any) -> Optional[int]:
        try:
            return journal.append(self.run_dir, op, **self._attempt(), **fields)
        except OSError as e:  # a full disk, a run directory gone: the database directly, as before journals
            _say(f"could not write the journal ({e.strerror or e}); writing to the ledger directly")
            return None

    def add_event(self, job_id: int, kind: str, message: str = "", **data: Any) -> None:
        if self._append("event", kind=kind, message=message, data=data) is None:
            try:
                self.call(lambda: self.ledger.add_event(job_id, kind, message, **data))
            except Exception as e:
                _say(f"event {kind!r} lost: neither the journal nor the ledger took it ({type(e).__name__})")
            return
        self._wake.set()

    def transition(self, job_id: int, to: Any, reason: Optional[str] = None, *, cause: Optional[str] = None,
                   source: str = "hpcft", strict: bool = False, **fields: Any) -> Optional[bool]:
        """Journal the state change, deliver it now. True when it changed the state, False when the state machine
        refused it (the job was stopped or ended meanwhile), None when the ledger did not answer: then it stands in
        the journal and is applied, by the same rules, when it does."""
        to = State(to)
        seq = self._append("state", to=to.value, reason=reason, cause=cause, source=source, fields=fields)
        if seq is None:
            return self.call(lambda: self.ledger.transition(job_id, to, reason, cause=cause, source=source,
                                                            strict=strict, **fields))
        out = self.deliver_now()  # the courier thread may have taken it a moment before: then it is in _changed
        if seq in self._changed:
            return True
        if out is None and self._seq < seq:
            return None
        # False also when another process (`hpcft sync`) delivered it first: that process acted on it (notified,
        # published), and callers that must know where the job stands read the row again
        return False

    def request_done(self, job_id: int, request: Any, outcome: str) -> None:
        data = request.data or {}
        self.add_event(job_id, "request_done", f"{data.get('action')} requested by {data.get('by')}: {outcome}",
                       request=data.get("request"))

    # ---------------------------------------------------------------------------------------- reads
    def get(self, job_id: int) -> Any:
        """The job's row; while the ledger does not answer, the row as last read."""
        try:
            self._job = self.call(lambda: self.ledger.get(job_id))
        except Exception:
            if self._job is None:
                raise
        return self._job

    def events(self, job_id: int) -> List[Any]:
        """The job's events; while the ledger does not answer, those in the journal (kind, message, attempt,
        data)."""
        try:
            return self.call(lambda: self.ledger.events(job_id))
        except Exception:
            from types import SimpleNamespace

            return [SimpleNamespace(kind=r.get("kind"), message=r.get("message"), data=r.get("data") or {},
                                    attempt=r.get("attempt") or getattr(self._job, "attempt", 1))
                    for r in journal.read(self.run_dir) if r.get("op") == "event"]

    def open_requests(self, job_id: int, action: Optional[str] = None) -> List[Any]:
        return self.call(lambda: self.ledger.open_requests(job_id, action))
