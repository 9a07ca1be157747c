"""Concurrency stress test of the ledger, for a bounded time, on SQLite (a temp HPCFT_HOME) and on the server
databases (MariaDB, PostgreSQL: tests/support/ledger_dbs.py).

For HPCFT_STRESS_SECONDS (default 6) per database, at the same time:
- 2 submitter processes create jobs through `Ledger.create_job` and write events on them;
- 2 mover processes read jobs (`Ledger.search`) and, from the state they read (often stale on purpose), write
  `tick` events and move them through the state machine with `Ledger.transition` (queued -> running ->
  success/stopped/error(node_fail)/queued, queued -> stopped) and take new attempts of ended jobs with `Ledger.claim`;
  some running jobs get the pid of a process that cannot exist, so that `hpcft sync` finds them gone;
- this process runs the cron side through the real CLI in a loop (at least once each): `hpcft sync`,
  `hpcft retry --backoff 0 --max-attempts 1000`, `hpcft list`.

`hpcft retry` resubmits the jobs that ended `error` with cause node_fail (transient): it claims them and hands them
to their executor. The cheapest real path is a submission that fails at once: every job is `executor=local` with an
output_dir whose `logs` is a plain file, so LocalExecutor.submit fails creating logs/job.log before it starts any
process; retry records that on the job (a `retry` event, then error with cause submit_failed), goes on and reports
the job under "failed to submit". No trainer, supervisor or sbatch ever runs.

Checks: every job a submitter created exists (with its one `created` event); every event a process wrote is there
(each tick carries (writer, n): the ledger holds exactly the set written); every state change a process was told
succeeded is there (count per job and source), and each `retry` failure the CLI reported has its event; replaying
each job's `state` events in order from `queued` obeys hpcft.states.can_transition and ends in the job's state; the
attempt counter equals 1 + the claims that succeeded (the processes' and those the CLI reported) + the requeues
that found the job already ended (a transition to queued from an ended state starts a new attempt: a mover that read
`running` may requeue a job another process has just ended; counted from the ledger); no CLI output
holds "database is locked", an OperationalError or a traceback; the processes raised nothing.
"""

import json
import os
import random
import re
import subprocess
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest

from support import hpcft_cli
from hpcft.ledger.store import Ledger
from hpcft.states import State, can_transition, is_terminal
from support.ledger_dbs import BACKENDS, drop_database, fresh_database

SECONDS = float(os.environ.get("HPCFT_STRESS_SECONDS", "6"))
SUBMITTERS, MOVERS = 2, 2
BAD_OUTPUT = ("database is locked", "OperationalError", "Traceback")


def _gone_pid() -> int:
    """A pid no process can have (above the kernel's pid_max)."""
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    except OSError:
        return 2**22 + 1


def _wait_go(go: Path, ready: Path) -> float:
    ready.touch()
    while not go.exists():
        time.sleep(0.02)
    return float(go.read_text())


def _submitter(url, name, work, out):
    res = {"created": [], "ticks": [], "ops": 0, "errors": []}
    try:
        led = Ledger(url)
        rnd = random.Random(name)
        deadline = _wait_go(work / "go", work / f"ready.{name}")
        i = 0
        while time.time() < deadline and len(res["errors"]) < 5:
            try:
                run = work / "runs" / f"{name}-{i}"
                run.mkdir(parents=True)
                (run / "logs").write_text("a file, not a directory: every submission of this job fails at once\n")
                job = led.create_job(name=f"{name}-{i}", method="lora", executor="local", output_dir=str(run),
                                     resource_spec="nodes=1 gpus=0", config={"model": {"name": "stress"}})
                res["created"].append(job.id)
                res["ops"] += 1
                for _ in range(rnd.randint(0, 2)):
                    n = len(res["ticks"])
                    led.add_event(job.id, "tick", f"{name} {n}", w=name, n=n)
                    res["ticks"].append([job.id, n])
                    res["ops"] += 1
            except Exception:
                res["errors"].append(traceback.format_exc())
            i += 1
    except Exception:
        res["errors"].append(traceback.format_exc())
    out.write_text(json.dumps(res))


def _mover(url, name, work, out):
    res = {"ticks": [], "moved": [], "claims": [], "ops": 0, "errors": []}
    try:
        led = Ledger(url)
        rnd = random.Random(name)
        gone = _gone_pid()
        deadline = _wait_go(work / "go", work / f"ready.{name}")
        while time.time() < deadline and len(res["errors"]) < 5:
            try:
                jobs = led.search(limit=30)
                res["ops"] += 1
                for job in rnd.sample(jobs, min(4, len(jobs))):
                    st = State(job.state)
                    if rnd.random() < 0.5:
                        n = len(res["ticks"])
                        led.add_event(job.id, "tick", f"{name} {n}", w=name, n=n)
                        res["ticks"].append([job.id, n])
                        res["ops"] += 1
                    if is_terminal(st):
                        ok = led.claim(job.id, st, job.attempt, f"claimed by {name}", cause="node_fail",
                                       source=name)
                        if ok:
                            res["claims"].append(job.id)
                    else:
                        if st == State.queued:
                            to, fields = rnd.choice([(State.running, {}), (State.running, {"pid": gone}),
                                                     (State.stopped, {})])
                        else:
                            to, fields = rnd.choice([(State.success, {}), (State.stopped, {}), (State.error, {}),
                                                     (State.error, {}), (State.queued, {})])
                        cause = {State.error: "node_fail", State.stopped: "user_stop",
                                 State.queued: "requeued"}.get(to)
                        ok = led.transition(job.id, to, f"moved by {name}", source=name, cause=cause, **fields)
                        if ok:
                            res["moved"].append(job.id)
                    res["ops"] += 1
            except Exception:
                res["errors"].append(traceback.format_exc())
    except Exception:
        res["errors"].append(traceback.format_exc())
    out.write_text(json.dumps(res))


def _ids(summary: str, what: str):
    m = re.search(rf"\d+ {what} \(([\d, ]+)\)", summary)
    return [int(x) for x in m.group(1).split(",")] if m else []


@pytest.mark.slow
@pytest.mark.parametrize("kind", BACKENDS)
def test_stress(kind, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HPCFT_HOME", str(home))
    monkeypatch.delenv("HPCFT_RUNS", raising=False)
    with fresh_database(kind, tmp_path) as server_url:
        if kind == "sqlite":
            monkeypatch.delenv("HPCFT_DB_URL", raising=False)
            url = f"sqlite:///{home / 'ledger.db'}"  # the default ledger of HPCFT_HOME
        else:
            monkeypatch.setenv("HPCFT_DB_URL", server_url)
            url = server_url
        try:
            _stress(kind, url, work, capsys)
        finally:
            drop_database(url)  # this process's engines (a server database is dropped by fresh_database too)


def _stress(kind, url, work, capsys):
    import multiprocessing as mp

    led = Ledger(url)  # creates the schema before anyone races
    env = dict(os.environ)
    ctx = mp.get_context("spawn")
    roles = [(_submitter, f"s{i}") for i in range(SUBMITTERS)] + [(_mover, f"m{i}") for i in range(MOVERS)]
    procs = [ctx.Process(target=fn, args=(url, name, work, work / f"{name}.json")) for fn, name in roles]
    for p in procs:
        p.start()
    try:
        t_ready = time.time()
        while len(list(work.glob("ready.*"))) < len(procs):
            assert time.time() - t_ready < 120, "stress processes did not start"
            assert all(p.exitcode in (None, 0) for p in procs), "a stress process died while starting"
            time.sleep(0.05)
        t0 = time.time()
        deadline = t0 + SECONDS
        (work / "go.tmp").write_text(repr(deadline))
        (work / "go.tmp").replace(work / "go")

        # the cron side: the real CLI, in a loop, while the processes write (from when they have made some jobs)
        time.sleep(min(2.0, SECONDS / 3))
        cli, cli_claims, cli_failed, bad, synced = [], Counter(), Counter(), [], 0
        cycle = [["sync"], ["retry", "--backoff", "0", "--max-attempts", "1000"], ["list"]]
        while time.time() < deadline or len(cli) < len(cycle):
            args = cycle[len(cli) % len(cycle)]
            r = subprocess.run(hpcft_cli() + args, capture_output=True, text=True, env=env, timeout=120)
            cli.append(args[0])
            text = r.stdout + r.stderr
            if any(b in text for b in BAD_OUTPUT) or r.returncode not in ((0, 1) if args[0] == "retry" else (0,)):
                bad.append(f"hpcft {' '.join(args)} -> {r.returncode}\n{text}")
            if args[0] == "sync":
                synced += int((re.search(r"(\d+) changed", r.stdout) or [0, 0])[1])
            if args[0] == "retry":
                line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
                assert line.startswith("retry:"), text
                cli_claims.update(_ids(line, "resubmitted") + _ids(line, "failed to submit"))
                cli_failed.update(_ids(line, "failed to submit"))
        for p in procs:
            p.join(120)
        duration = time.time() - t0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    results = {name: json.loads((work / f"{name}.json").read_text()) for _, name in roles}
    errors = [e for r in results.values() for e in r["errors"]]
    assert not errors, "\n".join(errors)
    assert not bad, "\n\n".join(bad)

    created = [j for name, r in results.items() if name.startswith("s") for j in r["created"]]
    jobs = {j.id: j for j in led.search()}
    assert sorted(jobs) == sorted(created), "a created job is missing (or one appeared from nowhere)"
    lost = illegal = 0
    problems = []
    n_events = n_states = n_late = 0
    for jid, job in jobs.items():
        evs = led.events(jid)
        n_events += len(evs)
        if [e.kind for e in evs].count("created") != 1:
            lost += 1
            problems.append(f"job {jid}: not exactly one created event")
        ticks = {(e.data["w"], e.data["n"]) for e in evs if e.kind == "tick"}
        written = {(name, n) for name, r in results.items() for j, n in r["ticks"] if j == jid}
        if ticks != written:
            lost += len(written ^ ticks)
            problems.append(f"job {jid}: ticks written {sorted(written)}, in the ledger {sorted(ticks)}")
        by_source = Counter(e.data.get("source") for e in evs if e.kind == "state")
        for name, r in results.items():
            told = r.get("moved", []).count(jid) + r.get("claims", []).count(jid)
            if by_source[name] != told:
                lost += abs(by_source[name] - told)
                problems.append(f"job {jid}: {told} state changes by {name} succeeded, {by_source[name]} recorded")
        retry_events = sum(e.kind == "retry" for e in evs)
        if retry_events != cli_failed[jid]:
            lost += abs(retry_events - cli_failed[jid])
            problems.append(f"job {jid}: hpcft retry reported {cli_failed[jid]} failed submissions, "
                            f"{retry_events} recorded")
        cur = State.queued
        for e in (e for e in evs if e.kind == "state"):
            n_states += 1
            src, dst = State(e.data["from"]), State(e.data["to"])
            if src != cur or not can_transition(src, dst):
                illegal += 1
                problems.append(f"job {jid}: event {e.id} {src} -> {dst} while the job was {cur}")
            cur = dst
        if cur.value != job.state:
            illegal += 1
            problems.append(f"job {jid}: the state events end in {cur}, the job is {job.state}")
        claims = sum(r.get("claims", []).count(jid) for r in results.values()) + cli_claims[jid]
        # a requeue (a transition to queued) that found the job already ended is a new attempt too: counted here
        late = sum(1 for e in evs if e.kind == "state" and e.data["to"] == "queued" and is_terminal(e.data["from"])
                   and e.data.get("source") in results and (e.data.get("reason") or "").startswith("moved by "))
        n_late += late
        if job.attempt != 1 + claims + late:
            problems.append(f"job {jid}: attempt {job.attempt}, {claims} claims succeeded, {late} late requeues")
    assert not problems, "\n".join(problems[:40])

    ops = sum(r["ops"] for r in results.values()) + len(cli)
    n_claims = sum(len(r.get("claims", [])) for r in results.values()) + sum(cli_claims.values())
    line = (f"stress {kind}: {ops} operations in {duration:.1f} s ({len(jobs)} jobs, {n_events} events, "
            f"{n_states} state changes, {n_claims} claims ({sum(cli_claims.values())} by hpcft retry), "
            f"{n_late} requeues of an ended job, {synced} changed by hpcft sync, "
            f"{len(cli)} CLI calls: {dict(Counter(cli))}); lost: {lost}, illegal transitions: {illegal}, "
            "locked/tracebacks seen by a user: 0")
    with capsys.disabled():
        print("\n" + line)
    assert n_claims and sum(cli_claims.values()) and n_states, line  # the races really happened
