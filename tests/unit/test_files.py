"""`hpcft.rundir.files`: private run directories (0700 whatever the umask) shared through POSIX ACLs; the argv builders
without running anything, error messages with fake tools, and one walk with real users (scripts/team-local)."""

import os
import pwd
import secrets
import shutil
import stat
import textwrap
from pathlib import Path

import pytest
from team import ALICE, BOB, CAROL, RUNS, VENV, run_as, team  # noqa: F401  (team: the fixture)

from hpcft.errors import HpcftError
from hpcft.rundir.files import acl_entries, getfacl_argv, make_run_dir, parse_acl_users, setfacl_argv, share_run_dir


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# ---------------------------------------------------------------------------------------------- make_run_dir

@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_make_run_dir_is_private_whatever_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run = make_run_dir(tmp_path / "a" / "b" / "1-job")
    finally:
        os.umask(old)
    assert mode(run) == 0o700 and mode(run / "logs") == 0o700
    assert run.stat().st_uid == os.getuid()


def test_make_run_dir_keeps_an_existing_directory_as_it_is(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o750)
    os.chmod(run, 0o750)  # e.g. shared already: a chmod would cut the ACL mask
    make_run_dir(run)
    assert mode(run) == 0o750 and mode(run / "logs") == 0o700
    make_run_dir(run)  # idempotent


def test_make_run_dir_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "run").write_text("x")
    with pytest.raises(HpcftError, match="not a directory"):
        make_run_dir(tmp_path / "run")


def test_submit_and_render_make_private_run_dirs(tmp_path, hpcft_home):
    from hpcft.config import compose
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.render import render
    from hpcft.jobs.submit import Plan, create_jobs

    old = os.umask(0o000)  # the most open umask: the run directories are still 0700
    try:
        cfg = compose.compose(["executor=local"])
        (job,) = create_jobs(Ledger(), Plan([cfg], [[]], "local"))
        cfg2 = compose.compose(["resources=cpu_small"])
        cfg2.output_dir = str(tmp_path / "rendered")
        render(cfg2)
    finally:
        os.umask(old)
    for run in (Path(job.output_dir), tmp_path / "rendered"):
        assert mode(run) == 0o700 and mode(run / "logs") == 0o700, run


# ---------------------------------------------------------------------------------------------- argv builders

def test_setfacl_argv_readers_writers_and_default_entries():
    argv = setfacl_argv("/runs/1-x", readers=["bob"], writers=["carol"], owner="alice")
    assert argv == ["setfacl", "-R", "-P", "-m",
                    "u:bob:rX,d:u:bob:rX,u:carol:rwX,d:u:carol:rwX,d:u:alice:rwX", "--", "/runs/1-x"]


def test_setfacl_argv_drops_users_no_longer_listed_first():
    argv = setfacl_argv("/r", readers=["bob"], writers=[], drop=["bob", "carol", "dave"], owner="alice")
    assert argv == ["setfacl", "-R", "-P", "-x", "u:carol,d:u:carol,u:dave,d:u:dave", "-m", "u:bob:rX,d:u:bob:rX",
                    "--", "/r"]
    # revoke everything: only removals; no owner default entry without writers
    assert setfacl_argv("/r", [], [], drop=["bob"], owner="alice") == [
        "setfacl", "-R", "-P", "-x", "u:bob,d:u:bob", "--", "/r"]
    assert setfacl_argv("/r", [], []) == []  # nothing to add or remove: nothing to run (setfacl would refuse)


def test_a_user_in_both_lists_is_a_writer_and_names_are_checked():
    assert acl_entries(["bob", "bob"], ["bob"]) == ["u:bob:rwX", "d:u:bob:rwX"]
    for bad in ["-R", "bob:rwx", "a,u:root:rwx", "", "b b", "../x"]:
        with pytest.raises(HpcftError, match="not a user name"):
            setfacl_argv("/r", [bad], [])


def test_parse_acl_users_reads_access_and_default_entries():
    out = textwrap.dedent("""\
        # file: /r
        # owner: alice
        user::rwx
        user:bob:r-x
        group::---
        mask::r-x
        other::---
        default:user::rwx
        default:user:carol:rwx   #effective:r-x
        default:group::---

        # file: /r/logs
        user::rwx
        user:dave:r-x
        """)
    assert parse_acl_users(out) == {"bob", "carol", "dave"}
    assert getfacl_argv("/r") == ["getfacl", "-R", "-P", "-p", "-c", "--", "/r"]


# ---------------------------------------------------------------------------------------------- errors, in one line

def _fake_tools(tmp_path: Path, setfacl_script: str) -> Path:
    b = tmp_path / "bin"
    b.mkdir()
    (b / "getfacl").write_text("#!/bin/sh\nexit 0\n")
    (b / "setfacl").write_text("#!/bin/sh\n" + setfacl_script)
    for f in b.iterdir():
        f.chmod(0o755)
    return b


def test_share_without_setfacl_says_what_to_install(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(HpcftError) as e:
        share_run_dir(run, ["root"], [])
    assert "acl package" in str(e.value) and "\n" not in str(e.value)


def test_share_on_a_filesystem_without_acls_says_so(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run")
    b = _fake_tools(tmp_path, 'echo "setfacl: $4: Operation not supported" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", f"{b}:{os.environ['PATH']}")
    with pytest.raises(HpcftError) as e:
        share_run_dir(run, ["root"], [])
    assert "no POSIX ACL support" in str(e.value) and "\n" not in str(e.value)


def test_share_refuses_unknown_users_before_running_anything(tmp_path, monkeypatch):
    run = make_run_dir(tmp_path / "run")
    b = _fake_tools(tmp_path, f'touch "{tmp_path}/ran"\n')
    monkeypatch.setenv("PATH", f"{b}:{os.environ['PATH']}")
    with pytest.raises(HpcftError, match="no such user"):
        share_run_dir(run, ["no-such-user-hpcft"], [])
    assert not (tmp_path / "ran").exists()
    with pytest.raises(HpcftError, match="no such run directory"):
        share_run_dir(tmp_path / "missing", [], [])


# ---------------------------------------------------------------------------------------------- real users

def test_real_users_read_write_and_revoke(team):  # noqa: F811
    """alice's run dir: private; shared ro with bob (he reads, also what the job writes later, but cannot write),
    carol cannot list it; shared rw, bob writes and alice reads his file; revoked, bob reads nothing."""
    run = RUNS / f"test-files-{secrets.token_hex(4)}"
    py = str(VENV / "bin" / "python")

    def alice(code: str):
        r = run_as(ALICE, [py, "-c", "from hpcft.rundir.files import make_run_dir, share_run_dir\n" + code])
        assert r.returncode == 0, r.stderr

    try:
        alice(f"d = make_run_dir({str(run)!r}); (d / 'logs' / 'job.log').write_text('step 1')")
        assert run.stat().st_uid == pwd.getpwnam(ALICE).pw_uid
        assert mode(run) == 0o700
        assert run_as(BOB, ["cat", str(run / "logs" / "job.log")]).returncode != 0  # private by default

        alice(f"share_run_dir({str(run)!r}, readers=[{BOB!r}], writers=[])")
        alice(f"open({str(run / 'logs' / 'later.log')!r}, 'w').write('step 2')")  # written after sharing
        assert run_as(BOB, ["cat", str(run / "logs" / "job.log")]).stdout == "step 1"
        assert run_as(BOB, ["cat", str(run / "logs" / "later.log")]).stdout == "step 2"
        assert run_as(BOB, ["touch", str(run / "bob-was-here")]).returncode != 0
        assert run_as(BOB, ["sh", "-c", f"echo x >> {run / 'logs' / 'job.log'}"]).returncode != 0
        listing = run_as(CAROL, ["ls", str(run)])
        assert listing.returncode != 0 and "Permission denied" in listing.stderr
        assert run_as(CAROL, ["cat", str(run / "logs" / "job.log")]).returncode != 0

        alice(f"share_run_dir({str(run)!r}, readers=[], writers=[{BOB!r}])")
        assert run_as(BOB, ["sh", "-c", f"echo from-bob > {run / 'bob.txt'}"]).returncode == 0
        assert run_as(ALICE, ["cat", str(run / "bob.txt")]).stdout.strip() == "from-bob"
        assert run_as(CAROL, ["ls", str(run)]).returncode != 0

        alice(f"share_run_dir({str(run)!r}, readers=[], writers=[])")  # revoke
        assert run_as(BOB, ["cat", str(run / "logs" / "job.log")]).returncode != 0
        assert run_as(BOB, ["ls", str(run)]).returncode != 0
        assert run_as(ALICE, ["cat", str(run / "logs" / "job.log")]).stdout == "step 1"
    finally:
        run_as(ALICE, ["rm", "-rf", str(run)])
        if run.exists():
            shutil.rmtree(run)
