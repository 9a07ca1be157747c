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
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, List, Optional

from hpcft.rundir import journal
from hpcft.states import State

MAX_PAUSE_S = 30.0
POLL_S = 1.0


def linger_default() -> float:
    try:
        return max(0.0, float(os.environ.get("HPCFT_JOURNAL_LINGER_S", "20")))
    except ValueError:
        return 20.0


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
                out = deliver(self.ledger, self.job_id, self.run_dir)
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
                self.ledger.add_event(job_id, kind, message, **data)
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
            return self.ledger.transition(job_id, to, reason, cause=cause, source=source, strict=strict, **fields)
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
            self._job = self.ledger.get(job_id)
        except Exception:
            if self._job is None:
                raise
        return self._job

    def events(self, job_id: int) -> List[Any]:
        """The job's events; while the ledger does not answer, those in the journal (kind, message, attempt,
        data)."""
        try:
            return self.ledger.events(job_id)
        except Exception:
            from types import SimpleNamespace

            return [SimpleNamespace(kind=r.get("kind"), message=r.get("message"), data=r.get("data") or {},
                                    attempt=r.get("attempt") or getattr(self._job, "attempt", 1))
                    for r in journal.read(self.run_dir) if r.get("op") == "event"]

    def open_requests(self, job_id: int, action: Optional[str] = None) -> List[Any]:
        return self.ledger.open_requests(job_id, action)
