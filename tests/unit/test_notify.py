"""Notifications when a job ends (hpcft.ledger.notify), through real apprise to a real local HTTP receiver.

Fast part: the ledger hook on SQLite and PostgreSQL (exactly one message when processes race to record different end
states, none for a user's stop or a state left out of `notify.on`), what the message says, a receiver that is down
or never answers (bounded wait, the job's state untouched, a `notify_failed` event) and the user defaults file.
End to end: real jobs through the CLI: success, error and a stop on the local executor, a time-limit expiry on the
real local Slurm cluster; the receiver gets exactly one message for each end state and none for the stop.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from support.receiver import closed_port
from hpcft.ledger.store import Ledger
from hpcft.states import USER_STOP, State
from support.ledger_dbs import fresh_database


def make_job(ledger, tmp_path, urls, on=("success", "error", "expired"), timeout=5, name="nt"):
    out = tmp_path / f"run-{name}"
    out.mkdir(exist_ok=True)
    cfg = {"name": name, "notify": {"urls": list(urls), "on": list(on), "timeout": timeout}}
    return ledger.create_job(name=name, method="lora", executor="local", output_dir=str(out), config=cfg)


def kinds(ledger, job_id):
    return [e.kind for e in ledger.events(job_id)]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_writers_send_exactly_one_message(backend, tmp_path, receiver):
    """A job's worker and `sync` record different end states at the same moment (threads, each through its own
    database connection): the compare-and-set transition lets one win, and only the winner sends: one message,
    about the state the ledger kept."""
    with fresh_database(backend, tmp_path) as url:
        ledger = Ledger(url)
        job = make_job(ledger, tmp_path, [receiver.url])
        assert ledger.transition(job.id, State.running, "started")
        go = threading.Barrier(3)
        won = {}

        def race(to):
            writer = Ledger(url)
            go.wait()
            won[to] = writer.transition(job.id, to, f"recorded by the {to} writer", source="race")

        threads = [threading.Thread(target=race, args=(s,)) for s in ("success", "error", "expired")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(won.values()) == [False, False, True], won
        final = ledger.get(job.id).state
        assert won[final]
        msgs = receiver.about(job.id)
        assert len(msgs) == 1, msgs
        assert msgs[0]["title"] == f"hpcft job {job.id} nt: {final}"
        assert f"reason: recorded by the {final} writer" in msgs[0]["message"]
        assert kinds(ledger, job.id).count("notified") == 1


def test_message_says_what_happened_and_filters(hpcft_home, tmp_path, receiver):
    ledger = Ledger()
    job = make_job(ledger, tmp_path, [receiver.url])
    out = Path(job.output_dir)
    with open(out / "metrics.jsonl", "w") as f:
        for step, loss in ((1, 3.5), (2, 2.25)):
            f.write(json.dumps({"type": "train", "step": step, "loss": loss}) + "\n")
        f.write(json.dumps({"type": "validation", "step": 2, "loss": 9.0}) + "\n")
        f.write('{"type": "train", "step": 3, "lo')  # a line being written: skipped
    assert ledger.transition(job.id, State.running, "started")
    time.sleep(1.1)
    assert ledger.transition(job.id, State.success, "trainer finished")
    assert not ledger.transition(job.id, State.success, "again")  # same state: nothing new, nothing sent
    assert not ledger.transition(job.id, State.error, "late sync")  # first end state wins: nothing sent
    (msg,) = receiver.about(job.id)
    assert msg["type"] == "success" and msg["title"] == f"hpcft job {job.id} nt: success"
    lines = msg["message"].splitlines()
    assert lines[:4] == [f"job: {job.id}", "name: nt", "state: success", "reason: trainer finished"]
    elapsed = lines[4].split(": ", 1)[1]
    assert elapsed.startswith("00:00:0") and elapsed != "00:00:00", lines[4]
    assert lines[5:] == ["last loss: 2.2500 (step 2)", f"outputs: {out}"]
    ev = next(e for e in ledger.events(job.id) if e.kind == "notified")
    assert ev.data == {"state": "success", "services": ["json"]} and receiver.url not in ev.message

    # a stop the user asked for: never; a state left out of notify.on: not either
    stop = make_job(ledger, tmp_path, [receiver.url], name="stopped")
    assert ledger.transition(stop.id, State.stopped, "stopped by user", cause=USER_STOP)
    picky = make_job(ledger, tmp_path, [receiver.url], on=["error"], name="picky")
    assert ledger.transition(picky.id, State.success, "trainer finished")
    expired = make_job(ledger, tmp_path, [receiver.url], name="late")
    assert ledger.transition(expired.id, State.expired, "time limit", cause="timeout")
    assert receiver.about(stop.id) == [] and receiver.about(picky.id) == []
    (late,) = receiver.about(expired.id)
    assert late["type"] == "warning" and "elapsed: did not start" in late["message"]
    assert "last loss: none recorded" in late["message"]
    assert "notified" not in kinds(ledger, stop.id) + kinds(ledger, picky.id)


def test_receiver_down_or_silent_leaves_the_job_alone(hpcft_home, tmp_path, receiver):
    ledger = Ledger()
    down = make_job(ledger, tmp_path, [f"json://127.0.0.1:{closed_port()}/x", receiver.url], name="down")
    assert ledger.transition(down.id, State.error, "trainer exited with code 1", cause="exit:1")
    j = ledger.get(down.id)
    assert (j.state, j.state_reason) == ("error", "trainer exited with code 1")
    assert len(receiver.about(down.id)) == 1  # the receiver that is up still gets it
    (ev,) = [e for e in ledger.events(down.id) if e.kind == "notify_failed"]
    assert ev.data["state"] == "error" and "127.0.0.1" in ev.data["error"]
    assert "notified" not in kinds(ledger, down.id)

    # a receiver that takes the connection and never answers: the wait is bounded by notify.timeout
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        slow = make_job(ledger, tmp_path, [f"json://127.0.0.1:{silent.getsockname()[1]}/x"], timeout=1,
                        name="silent")
        t0 = time.monotonic()
        assert ledger.transition(slow.id, State.success, "trainer finished")
        took = time.monotonic() - t0
        # the next job to end in this process (a `sync` ending many) does not wait for it again
        again = make_job(ledger, tmp_path, [slow.config["notify"]["urls"][0]], timeout=1, name="again")
        t0 = time.monotonic()
        assert ledger.transition(again.id, State.error, "trainer exited with code 1")
        took_again = time.monotonic() - t0
    finally:
        silent.close()
    assert took < 2.5 and took_again < 0.5, (took, took_again)
    assert ledger.get(slow.id).state == "success"
    (ev,) = [e for e in ledger.events(slow.id) if e.kind == "notify_failed"]
    assert "no answer within 1 s" in ev.data["error"]
    (ev,) = [e for e in ledger.events(again.id) if e.kind == "notify_failed"]
    assert "skipped json: no answer earlier in this process" in ev.data["error"]


def test_user_defaults_file(hpcft_home, receiver):
    from hpcft.jobs import preflight
    from hpcft.errors import ConfigError

    hpcft_home.mkdir(parents=True, exist_ok=True)
    f = hpcft_home / "notify.yaml"
    f.write_text(f"urls:\n  - {receiver.url}\non: [error, expired]\n")  # unquoted `on:` (YAML 1.1 boolean) works
    cfg = preflight.load([])
    assert list(cfg.notify.urls) == [receiver.url] and list(cfg.notify.on) == ["error", "expired"]
    cfg = preflight.load(["notify.on=[success]"])  # the command line wins, key by key
    assert list(cfg.notify.urls) == [receiver.url] and list(cfg.notify.on) == ["success"]
    assert list(preflight.load(["notify.urls=[]"]).notify.urls) == []  # no message for this job
    f.write_text("url: [ntfy://ntfy.sh/x]\n")
    with pytest.raises(ConfigError, match=r"notify.yaml: unknown key url; the keys are urls, on, timeout"):
        preflight.load([])
    f.write_text("urls:\n  - nosuchservice://x\n")
    with pytest.raises(ConfigError, match=r"notify.urls: nosuchservice://\.\.\. is not a URL apprise can send to"):
        preflight.load([])


# ------------------------------------------------------------------------------------------------- end to end


def test_a_submitted_jobs_receivers_are_kept_for_its_owner_alone(hpcft_home, tmp_path, receiver):
    """notify.urls (a URL may carry a password) is neither in the ledger's config column nor in the run directory's
    config.yaml (a project member reads both): both hold it masked, and `.secrets.json` (mode 0600, no ACL entry)
    keeps it for the owner's processes: the end-of-job message still reaches the receiver, the owner's
    `show --config` and clone still have it."""
    import os
    import stat
    import subprocess

    from support import hpcft_cli
    from hpcft.jobs import clone, submit
    from hpcft.rundir.secrets_file import SECRETS_FILE

    url = receiver.url.replace("://", "://user:pa55word@", 1) if "@" not in receiver.url else receiver.url
    ledger = Ledger()
    p = submit.plan(["executor=local", "name=secret", f"notify.urls=[{url}]"])
    (job,) = submit.create_jobs(ledger, p)
    out = Path(job.output_dir)
    row = ledger.get(job.id)
    assert row.config["notify"]["urls"] == ["***"] and url not in json.dumps(row.config)
    assert url not in (out / "config.yaml").read_text() and "***" in (out / "config.yaml").read_text()
    secret_file = out / SECRETS_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600 and url in secret_file.read_text()
    shown = subprocess.run(hpcft_cli() + ["show", str(job.id), "--config"], capture_output=True, text=True,
                           env=dict(os.environ))
    assert url in shown.stdout, shown.stdout + shown.stderr  # the owner sees their own receivers
    twin = clone.plan(row, ["training.learning_rate=1e-3"], by=row.owner).configs[0]
    assert list(twin.notify.urls) == [url]
    assert ledger.transition(job.id, State.error, "trainer exited with code 1", cause="exit:1")
    (msg,) = receiver.about(job.id)  # sent with the real URL, read back from the run directory
    assert msg["type"] == "failure"
