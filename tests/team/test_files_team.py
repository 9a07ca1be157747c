"""`hpcft.rundir.files` with real users (scripts/team-local): alice's run directory is private, shared read-only and
read-write with bob through POSIX ACLs, never readable by carol of another project, and revoked."""

import pwd
import secrets
import shutil
import stat
from pathlib import Path

from support.team import ALICE, BOB, CAROL, RUNS, VENV, run_as, team  # noqa: F401  (team: the fixture)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


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
