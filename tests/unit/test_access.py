"""Per-job access (hpcft.ledger.access) through the real CLI on a SQLite ledger, where hpcft itself enforces the rules
(`HPCFT_USER` names the acting user on a single-machine SQLite ledger only). The same matrix against PostgreSQL,
real Unix users and raw SQL is tests/team/test_team.py."""

import json
import os
import subprocess

import pytest

from support import hpcft_cli
from hpcft.ledger import access as A


def cli(user, *args, home):
    env = dict(os.environ, HPCFT_HOME=str(home), HPCFT_USER=user)
    env.pop("HPCFT_DB_URL", None)
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def team_ledger(hpcft_home, monkeypatch, tmp_path):
    """alice's jobs 1 (private), 2 (ro), 3 (rw) in project proj-a; bob is a member, carol is not."""
    from hpcft.ledger.store import Ledger

    monkeypatch.setenv("HPCFT_USER", "alice")
    ledger = Ledger()
    ledger.set_projects({"proj-a": ["alice", "bob"], "proj-b": ["carol"]})
    ids = []
    for name, acc in (("private", "none"), ("shared-ro", "ro"), ("shared-rw", "rw")):
        out = tmp_path / name
        (out / "logs").mkdir(parents=True)
        (out / "logs" / "job.log").write_text(f"log of {name}\n")
        cfg = {"name": name, "training": {"resume_from": "latest"}}
        j = ledger.create_job(name=name, project="proj-a", method="lora", resource_spec="nodes=1", access=acc,
                              output_dir=str(out), executor="local", state="running", config=cfg)
        ids.append(j.id)
    return hpcft_home, ids


@pytest.mark.parametrize("lvl, action, ok", [
    ("owner", "share", True), ("admin", "delete", True), ("rw", "stop", True), ("rw", "share", False),
    ("ro", "clone", True), ("ro", "logs", True), ("ro", "stop", False), ("ro", "delete", False),
    ("none", "show", False),
])
def test_rules(lvl, action, ok):
    assert A.allowed(lvl, action) is ok


def test_level_follows_membership_and_the_sharing_switch():
    class J:
        id, owner, project, access = 1, "alice", "p", "rw"

    bob = A.Caller("bob", projects=frozenset({"p"}))
    carol = A.Caller("carol", projects=frozenset({"q"}))
    assert A.level(J, bob) == "rw" and A.level(J, carol) == "none"
    assert A.level(J, bob, sharing=False) == "none"  # the administrator's switch forces none
    assert A.level(J, A.Caller("root", admin=True)) == "admin"
    with pytest.raises(A.AccessDenied, match=r"job 1 \(owner alice, project p\): you \(carol\) have no access"):
        A.require(J, "show", carol)
    with pytest.raises(Exception, match="may not be more open than its parent"):
        A.cap_to_parent("rw", "ro", 5)


def test_the_matrix_through_the_cli(team_ledger):
    home, (private, ro, rw) = team_ledger
    # none: nothing, one line, exit 3, naming the job, its owner, the caller's access and what to do
    r = cli("bob", "show", str(private), home=home)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert "job 1 (owner alice, project proj-a): you (bob) have no access and cannot show it" in r.stderr
    assert "hpcft share 1 ro|rw" in r.stderr
    # read-only: show, logs, events, curve (no metrics here: its own message), clone allowed; changes refused
    for args in (["show", str(ro)], ["logs", str(ro)], ["events", str(ro)], ["top", str(ro), "--once"]):
        assert cli("bob", *args, home=home).returncode == 0, args
    assert cli("bob", "top", str(private), "--once", home=home).returncode == 3  # none: not even a look
    for args in (["stop", str(ro)], ["resume", str(ro)], ["delete", str(ro)], ["share", str(ro), "rw"]):
        r = cli("bob", *args, home=home)
        assert r.returncode == 3 and "read-only access" in r.stderr and "you may clone, curve" in r.stderr, r.stderr
    # carol is in another project: sees nothing of alice's, even shared
    assert cli("carol", "show", str(ro), home=home).returncode == 3
    # read-write: bob's stop on alice's running job is a request, not a stop recorded as if done
    r = cli("bob", "stop", str(rw), home=home)
    assert r.returncode == 0 and "runs as alice: stop requested (recorded)" in r.stdout, r.stdout + r.stderr
    ev = json.loads(cli("alice", "events", str(rw), "--json", home=home).stdout)
    assert [e["kind"] for e in ev].count("request") == 1 and not [e for e in ev if e["kind"] == "stop"]
    assert json.loads(cli("alice", "list", "--json", home=home).stdout)[0]["state"] == "running"
    # only the owner shares; the owner may close it again
    assert cli("bob", "share", str(rw), "none", home=home).returncode == 3
    r = cli("alice", "share", str(rw), "none", home=home)
    assert r.returncode == 0 and "access none" in r.stdout, r.stderr
    assert cli("bob", "show", str(rw), home=home).returncode == 3


def test_sharing_off_forces_none(team_ledger):
    home, (_, ro, _) = team_ledger
    assert cli("bob", "show", str(ro), home=home).returncode == 0
    assert cli("alice", "admin", "sharing", "off", home=home).returncode == 0
    r = cli("bob", "show", str(ro), home=home)
    assert r.returncode == 3 and "sharing is switched off" in r.stderr, r.stderr
    assert cli("alice", "show", str(ro), home=home).returncode == 0  # the owner still sees it
    cli("alice", "admin", "sharing", "on", home=home)


def test_access_at_submit_is_checked(hpcft_home):
    r = subprocess.run(hpcft_cli() + ["submit", "--dry-run", "access=everyone"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, HPCFT_HOME=str(hpcft_home)))
    assert r.returncode == 2 and "access=everyone: unknown access; use access=none|ro|rw" in r.stderr
