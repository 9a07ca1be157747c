"""`hpcft.rundir.files`: private run directories (0700 whatever the umask) shared through POSIX ACLs; the argv builders
without running anything and error messages with fake tools (the walk with real users: tests/team/test_files_team.py)."""

import os
import stat
import textwrap
from pathlib import Path

import pytest

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
