"""Helpers for tests that act as real Unix users of a team (scripts/team-local up), against the real PostgreSQL ledger
and the real Slurm cluster. No tests in here.

    from support.team import ALICE, BOB, as_user, psql_as, run_as, team  # noqa: F401  (team: the fixture)

    def test_x(team):
        r = as_user(ALICE, ["submit", "+experiment=quickstart", "--dry-run"])   # /opt/hpcft/venv/bin/hpcft as alice
        rc, out, err = psql_as(BOB, "SELECT count(*) FROM job")                  # raw SQL as bob (peer auth)

Every command runs with `runuser -u USER` in a clean environment (`user_env`): that user's HOME and cwd, Slurm's tools
on PATH, HPCFT_DB_URL (socket, peer authentication: the database role is the Unix user), HPCFT_RUNS (the shared runs
root), HF_HUB_OFFLINE=1, OMP_NUM_THREADS=1; nothing of root's environment leaks in (no PGUSER, no HPCFT_USER).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEAM_LOCAL = ROOT / "scripts" / "team-local"
VENV = Path(os.environ.get("HPCFT_TEAM_VENV", "/opt/hpcft/venv"))
HPCFT = VENV / "bin" / "hpcft"
RUNS = Path(os.environ.get("HPCFT_TEAM_RUNS", "/srv/hpcft-team/runs"))
SOCKDIR = "/var/run/postgresql"
DB_URL = os.environ.get("HPCFT_TEAM_DB_URL", f"postgresql+psycopg:///hpcft?host={SOCKDIR}")
ALICE, BOB, CAROL, ADMIN = "hpcft-alice", "hpcft-bob", "hpcft-carol", "hpcft-admin"
USERS = (ALICE, BOB, CAROL, ADMIN)
PROJECTS = {"proj-a": (ALICE, BOB, ADMIN), "proj-b": (CAROL,)}  # Slurm accounts and their members
PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"


def home_of(user: str) -> str:
    return pwd.getpwnam(user).pw_dir


def user_env(user: str, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The whole environment a team user's command gets (extra `env` entries added last)."""
    home = home_of(user)
    base = {"HOME": home, "USER": user, "LOGNAME": user, "PATH": PATH, "LANG": "C.UTF-8",
            "HPCFT_DB_URL": DB_URL, "HPCFT_RUNS": str(RUNS), "HPCFT_HOME": f"{home}/.hpcft",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1"}
    return {**base, **(env or {})}


def run_as(user: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 120,
           cwd: Optional[str] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
    """Any command as `user` (`runuser -u USER -- argv...`, clean environment, cwd = their home). Text output;
    never raises on a non-zero exit (look at .returncode)."""
    return subprocess.run([RUNUSER, "-u", user, "--", *map(str, argv)], env=user_env(user, env),
                          cwd=cwd or home_of(user), capture_output=True, text=True, timeout=timeout, input=input)


def as_user(user: str, argv: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 180,
            cwd: Optional[str] = None, input: Optional[str] = None) -> subprocess.CompletedProcess:
    """`hpcft ARGV...` as `user`, from the team's shared venv (/opt/hpcft/venv/bin/hpcft)."""
    return run_as(user, [str(HPCFT), *argv], env=env, timeout=timeout, cwd=cwd, input=input)


def psql_as(user: str, sql: str, timeout: float = 60) -> Tuple[int, str, str]:
    """Raw SQL as `user` on the team's database (socket, peer authentication): (returncode, stdout, stderr), psql
    -At output (unaligned, tuples only, `|` between columns); ON_ERROR_STOP, so a refused statement gives rc 1."""
    r = run_as(user, ["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
               timeout=timeout)
    return r.returncode, r.stdout.strip(), r.stderr.strip()


@dataclass(frozen=True)
class Team:
    alice: str = ALICE
    bob: str = BOB
    carol: str = CAROL
    admin: str = ADMIN
    runs: Path = RUNS
    db_url: str = DB_URL
    hpcft: Path = HPCFT
    projects: Tuple[Tuple[str, Tuple[str, ...]], ...] = tuple(PROJECTS.items())


def team_status() -> Tuple[bool, str]:
    """(up, why not): scripts/team-local status (users, associations, roles, runs root, venv as new as the code)."""
    if os.geteuid() != 0:
        return False, "the team tests run as root (runuser); run them with sudo after `scripts/team-local up`"
    try:
        r = subprocess.run(["bash", str(TEAM_LOCAL), "status"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "scripts/team-local status did not answer in 60 s"
    if r.returncode != 0:
        return False, "; ".join(x for x in (r.stdout + r.stderr).splitlines() if x.strip())
    return True, ""


@pytest.fixture(scope="session")
def team():
    """Skip unless scripts/team-local is up (and its venv holds this checkout's code); fail instead when
    HPCFT_REQUIRE_SLURM=1 as root (scripts/test). Yields a Team (user names, runs root, ledger URL, hpcft path)."""
    up, why = team_status()
    if not up:
        if os.environ.get("HPCFT_REQUIRE_SLURM") == "1" and os.geteuid() == 0:
            pytest.fail(f"HPCFT_REQUIRE_SLURM=1 but the team is not up: {why}")
        pytest.skip(f"no team here ({why}): run `sudo bash scripts/team-local up`")
    return Team()
