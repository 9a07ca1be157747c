"""Aliases, tags and the corrupt mark on the team ledger: real Unix users (scripts/team-local), the real PostgreSQL
with the row-level security, guard triggers and functions of `hpcft admin init`. The same database rules as versions:
an alias is seen by whoever sees its version, set and moved by the version's owner only; tags change with the
version's row (owner only); any reader may mark a version corrupt (a job's submitter found it damaged), nobody else.

alice and bob are members of proj-a, carol of proj-b. The version rows are written as alice in raw SQL (no training
needed: these are database rules).
"""

import json
import os
import subprocess

import pytest

from support.team import ALICE, BOB, CAROL, SOCKDIR, as_user, run_as, team  # noqa: F401

pytestmark = [pytest.mark.slurm]
DB = "hpcft_aliases_team_test"
URL = f"postgresql+psycopg:///{DB}?host={SOCKDIR}"
ENV = {"HPCFT_DB_URL": URL}
INSERT = ("INSERT INTO model_assets (name, version, state, owner, project, visibility, source, kind, method, "
          "description, path, created_at, updated_at) VALUES ('alice-x', {v}, 'published', '" + ALICE + "', "
          "'proj-a', 'project', 'final', 'lora', 'lora', '', '/nowhere', now(), now())")


def hp(user, *args):
    return as_user(user, list(args), env=ENV)


def sql(user, statement):
    r = run_as(user, ["psql", "-X", "-h", SOCKDIR, "-d", DB, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement])
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


@pytest.fixture(scope="module")
def versions(team):  # noqa: F811
    from support import hpcft_cli

    psql = ["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c"]
    subprocess.run(psql + [f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], capture_output=True, timeout=60)
    assert subprocess.run(psql + [f"CREATE DATABASE {DB}"], capture_output=True, timeout=60).returncode == 0
    for args in (["admin", "init"], ["admin", "sync-projects"]):
        r = subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HPCFT_DB_URL": URL})
        assert r.returncode == 0, r.stdout + r.stderr
        assert args != ["admin", "init"] or "model_aliases" in r.stdout
    for v in (1, 2):
        rc, _, err = sql(ALICE, INSERT.format(v=v))
        assert rc == 0, err
    yield
    subprocess.run(psql + [f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], capture_output=True, timeout=60)


def test_an_alias_is_set_by_the_owner_and_seen_like_its_version(versions):
    assert ok(hp(ALICE, "models", "alias", "alice-x@1", "champion")).stdout.strip() == "alice-x@champion -> alice-x@1"
    assert "(moved from alice-x@1)" in ok(hp(ALICE, "models", "alias", "alice-x@2", "champion")).stdout
    seen = {a["ref"]: a["aliases"] for a in json.loads(ok(hp(BOB, "models", "list", "--json")).stdout)}
    assert seen == {"alice-x@2": ["champion"], "alice-x@1": []}
    assert sql(BOB, "SELECT alias, version, owner FROM model_aliases") == (0, f"champion|2|{ALICE}", "")
    assert sql(CAROL, "SELECT count(*) FROM model_aliases")[1] == "0"
    r = hp(CAROL, "models", "show", "alice-x@champion")
    assert r.returncode == 3 and "no such alias, or you (hpcft-carol) may not see it" in r.stderr, r.stderr


def test_only_the_owner_sets_or_moves_an_alias_the_database_agrees(versions):
    r = hp(BOB, "models", "alias", "alice-x@1", "best")
    assert r.returncode == 3 and "may use it but not set aliases of it" in r.stderr, r.stderr
    rc, _, err = sql(BOB, "INSERT INTO model_aliases (name, alias, version, owner, project, visibility, created_at, "
                          f"updated_at) VALUES ('alice-x', 'best', 1, '{BOB}', 'proj-a', 'project', now(), now())")
    assert rc != 0 and "only its owner or an administrator sets its aliases" in err, err
    assert sql(BOB, "UPDATE model_aliases SET version = 1")[1] == "UPDATE 0"
    assert sql(BOB, "DELETE FROM model_aliases")[1] == "DELETE 0"
    rc, _, err = sql(ALICE, "UPDATE model_aliases SET version = 7")  # not a published version
    assert rc != 0 and "model asset alice-x@7 is not a published version" in err, err
    # the trigger takes owner, project and visibility from the version, whatever the insert said
    rc, _, err = sql(ALICE, "INSERT INTO model_aliases (name, alias, version, owner, project, visibility, "
                            f"created_at, updated_at) VALUES ('alice-x', 'old', 1, '{ALICE}', 'proj-b', 'all', now(), "
                            "now())")
    assert rc == 0, err
    assert sql(CAROL, "SELECT count(*) FROM model_aliases")[1] == "0"
    assert "removed alias alice-x@old" in ok(hp(ALICE, "models", "alias", "alice-x", "old", "--delete")).stdout


def test_tags_change_with_the_version_owner_only(versions):
    assert "alice-x@1 tags: stage=prod" in ok(hp(ALICE, "models", "tag", "alice-x@1", "stage=prod")).stdout
    r = hp(BOB, "models", "tag", "alice-x@1", "stage=dev")
    assert r.returncode == 3 and "may use it but not tag it" in r.stderr, r.stderr
    assert sql(BOB, "UPDATE model_assets SET tags = '{\"stage\": \"dev\"}'")[1] == "UPDATE 0"
    assert {a["ref"]: a["tags"] for a in json.loads(ok(hp(BOB, "models", "list", "--json")).stdout)}[
        "alice-x@1"] == {"stage": "prod"}


def test_a_reader_may_mark_a_version_corrupt_nobody_else(versions):
    vid = sql(ALICE, "SELECT id FROM model_assets WHERE version = 1")[1]
    assert sql(CAROL, f"SELECT hpcft_asset_mark_corrupt({vid}, 'checksum differs')")[1] == "f"
    assert sql(BOB, "UPDATE model_assets SET state = 'corrupt'")[1] == "UPDATE 0"
    assert sql(BOB, f"SELECT hpcft_asset_mark_corrupt({vid}, 'checksum differs')")[1] == "t"
    assert sql(BOB, f"SELECT hpcft_asset_mark_corrupt({vid}, 'again')")[1] == "f"  # only a published one
    assert sql(ALICE, f"SELECT state, state_reason FROM model_assets WHERE id = {vid}")[1] == \
        "corrupt|checksum differs"
