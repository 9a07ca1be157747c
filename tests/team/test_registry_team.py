"""Model asset visibility on the team ledger: real Unix users (scripts/team-local), the real PostgreSQL with the
row-level security, grants and guard trigger of `hpcft admin init`, a registry directory on a shared path.

alice and bob are members of proj-a, carol of proj-b. alice trains a tiny LoRA job, publishes it into a registry
she may not write yet (publish_failed: Permission denied), and republishes once it is writable; `project` versions
are seen (in hpcft, in raw SQL, on disk) by bob and not by carol, `all` versions by everyone; only the owner
deletes, never while someone's queued job starts from the version.
"""

import json
import os
import shutil
import subprocess

import pytest

from support.team import ALICE, BOB, CAROL, SOCKDIR, as_user, run_as, team  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.train, pytest.mark.slow]
DB = "hpcft_registry_team_test"
URL = f"postgresql+psycopg:///{DB}?host={SOCKDIR}"
REGISTRY = "/srv/hpcft-team/registry-test"
ENV = {"HPCFT_DB_URL": URL, "HPCFT_REGISTRY": REGISTRY}


def hp(user, *args, timeout=300):
    return as_user(user, list(args), env=ENV, timeout=timeout)


def sql(user, statement):
    r = run_as(user, ["psql", "-X", "-h", SOCKDIR, "-d", DB, "-At", "-v", "ON_ERROR_STOP=1", "-c", statement])
    return r.returncode, r.stdout.strip(), r.stderr.strip()


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    return r


def refs(user):
    return sorted(a["ref"] for a in json.loads(ok(hp(user, "models", "list", "--json")).stdout))


@pytest.fixture(scope="module")
def published(team):  # noqa: F811
    from support import hpcft_cli

    psql = ["psql", "-X", "-h", SOCKDIR, "-d", "hpcft", "-c"]
    subprocess.run(psql + [f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], capture_output=True, timeout=60)
    assert subprocess.run(psql + [f"CREATE DATABASE {DB}"], capture_output=True, timeout=60).returncode == 0
    for args in (["admin", "init"], ["admin", "sync-projects"]):
        r = subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HPCFT_DB_URL": URL})
        assert r.returncode == 0, r.stdout + r.stderr
        assert args != ["admin", "init"] or "model_assets" in r.stdout
    shutil.rmtree(REGISTRY, ignore_errors=True)
    os.makedirs(REGISTRY)
    os.chmod(REGISTRY, 0o755)  # root's: not writable by alice yet
    r = ok(hp(ALICE, "submit", "executor=local", "training.sequence_length=64", "training.batch_size=8",
              "training.max_steps=2", "name=alice-sft", "--wait", timeout=600))
    job_id = int(r.stdout.split("submitted job ")[1].split()[0])
    yield job_id
    shutil.rmtree(REGISTRY, ignore_errors=True)


def test_publish_into_a_registry_the_user_cannot_write_fails_then_republish(published):
    r = hp(ALICE, "publish", str(published), "--name", "alice-sft")
    assert r.returncode == 1 and "model asset alice-sft@1: publish_failed: cannot write" in r.stderr, r.stderr
    assert "Permission denied" in r.stderr
    (a,) = json.loads(ok(hp(ALICE, "models", "list", "--json")).stdout)
    assert a["state"] == "publish_failed" and a["owner"] == ALICE and a["project"] == "proj-a"
    os.chmod(REGISTRY, 0o1777)  # the cause fixed: a shared, sticky registry directory
    assert "published alice-sft@1" in ok(hp(ALICE, "models", "republish", "alice-sft@1")).stdout


def test_project_versions_are_seen_by_members_only_and_the_database_agrees(published):
    assert refs(BOB) == ["alice-sft@1"]
    assert ok(hp(BOB, "models", "show", "alice-sft@1", "--verify")).stdout.rstrip().endswith("matches SHA256SUMS")
    assert refs(CAROL) == []
    r = hp(CAROL, "models", "show", "alice-sft@1")
    assert r.returncode == 3 and "not in the registry, or you (hpcft-carol) may not see it" in r.stderr
    assert sql(BOB, "SELECT count(*) FROM model_assets")[1] == "1"
    assert sql(CAROL, "SELECT count(*) FROM model_assets")[1] == "0"
    assert run_as(CAROL, ["ls", f"{REGISTRY}/alice-sft/v1"]).returncode != 0  # the files follow (ACLs)
    assert run_as(BOB, ["cat", f"{REGISTRY}/alice-sft/v1/README.md"]).returncode == 0


def test_all_versions_are_seen_by_everyone_and_changed_by_the_owner_only(published):
    ok(hp(ALICE, "publish", str(published), "--name", "alice-sft", "--visibility", "all"))
    assert refs(CAROL) == ["alice-sft@2"]
    assert run_as(CAROL, ["cat", f"{REGISTRY}/alice-sft/v2/adapter_config.json"]).returncode == 0
    r = hp(CAROL, "models", "delete", "alice-sft@2")
    assert r.returncode == 3 and "may use it but not delete it" in r.stderr, r.stderr
    assert sql(CAROL, "UPDATE model_assets SET state = 'deleted'")[1] == "UPDATE 0"
    # a name belongs to its first publisher: the database refuses another user's version of it
    rc, _, err = sql(CAROL, "INSERT INTO model_assets (name, version, state, owner, project, visibility, source, "
                            "kind, method, description, path, created_at, updated_at) VALUES ('alice-sft', 9, "
                            f"'published', '{CAROL}', 'proj-b', 'all', 'final', 'lora', 'lora', '', '', now(), now())")
    assert rc != 0 and "model asset name alice-sft belongs to hpcft-alice" in err


def test_a_version_a_queued_job_of_another_user_starts_from_cannot_be_deleted(published):
    rc, out, err = sql(CAROL, "INSERT INTO jobs (name, description, owner, project, method, state, executor, "
                              "resource_spec, output_dir, attempt, created_at, updated_at, access, config) VALUES "
                              f"('uses-it', '', '{CAROL}', 'proj-b', 'lora', 'queued', 'slurm', '', '', 1, now(), "
                              "now(), 'none', '{\"model\": {\"asset\": \"alice-sft@2\"}}') RETURNING id")
    assert rc == 0, err
    carol_job = out.splitlines()[0]
    r = hp(ALICE, "models", "delete", "alice-sft@2")  # alice cannot see carol's job, yet it is named
    assert r.returncode == 4 and f"in use by job {carol_job} ({CAROL}, queued)" in r.stderr, r.stderr
    rc, _, err = sql(ALICE, "UPDATE model_assets SET state = 'deleted' WHERE version = 2")
    assert rc != 0 and f"model asset alice-sft@2 is in use by job {carol_job}" in err
    assert sql(CAROL, f"UPDATE jobs SET state = 'stopped' WHERE id = {carol_job}")[1] == "UPDATE 1"
    assert "deleted alice-sft@2" in ok(hp(ALICE, "models", "delete", "alice-sft@2")).stdout
    assert refs(CAROL) == []
