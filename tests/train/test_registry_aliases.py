"""Aliases, tags and honest versions through the real CLI on a SQLite ledger and real tiny jobs: a LoRA job
(checkpoints at steps 2 and 4, evaluated once, at step 4) is published twice with identical content (one version),
its step-2 checkpoint says it has no evaluation of its own, an alias moves between versions and a job started from
it records the version it named, a byte flipped in a version is refused at submit and the version marked corrupt,
a DPO asset holds no pickle, and a full registry disk names the registry file it could not write.

The tests of this module share one HPCFT_HOME and run in file order (each builds on the one before).
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from support import hpcft_cli

pytestmark = [pytest.mark.train, pytest.mark.slow]
FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.learning_rate=0.01"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("aliases") / "hpcft-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCFT_HOME", str(home))
        for var in ("HPCFT_DB_URL", "HPCFT_RUNS", "HPCFT_REGISTRY"):
            mp.delenv(var, raising=False)
        yield home


def run(args, timeout=600, env=None):
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=None if env is None else {**os.environ, **env})


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return r


def refused(r, code, words):
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    return r


def assets(*args):
    return {a["ref"]: a for a in json.loads(ok(run(["models", "list", "--json", *args])).stdout)}


def job(job_id):
    from hpcft.ledger.store import Ledger

    return Ledger().get(job_id)


@pytest.fixture(scope="module")
def trained(home):
    """Job 1: tiny LoRA, 4 steps (less than an epoch: evaluated once, at step 4), checkpoints at steps 2 and 4."""
    ok(run(["submit", *FAST, "training.max_steps=4", "training.save_strategy=steps", "training.save_interval=2",
            "name=sft-lora", "--wait"]))
    return 1


def test_identical_content_returns_the_existing_version(home, trained):
    r = ok(run(["publish", "1", "--name", "sft"]))
    assert r.stdout.startswith("published sft@1 ")
    r = ok(run(["publish", "1", "--name", "sft"]))
    assert r.stdout.startswith("already published as sft@1 (identical content; no new version, no copy)"), r.stdout
    ok(run(["publish", "1", "--checkpoint", "step-2", "--name", "sft"]))
    r = ok(run(["publish", "1", "--checkpoint", "2", "--name", "sft"]))
    assert "already published as sft@2" in r.stdout
    assert sorted(assets()) == ["sft@1", "sft@2"]
    assert sorted(p.name for p in (home / "registry" / "sft").iterdir() if not p.name.startswith(".")) == ["v1", "v2"]
    from hpcft.ledger.store import Ledger

    evs = [e for e in Ledger().events(1) if e.kind == "published" and (e.data or {}).get("identical")]
    assert [e.data["asset"] for e in evs] == ["sft@1", "sft@2"]


def test_a_version_gives_the_evaluation_of_its_own_step_or_says_there_was_none(home, trained):
    summary = json.loads((Path(job(1).output_dir) / "summary.json").read_text())
    final = (home / "registry" / "sft" / "v1" / "README.md").read_text()
    figures = {m["name"]: m["value"] for r in yaml.safe_load(final.split("---")[1])["model-index"][0]["results"]
               for m in r["metrics"]}
    assert figures["validation loss"] == pytest.approx(summary["eval"]["validation"]["loss"])
    show = ok(run(["models", "show", "sft@1"])).stdout
    assert "eval        validation at step 4: loss" in show
    ckpt = (home / "registry" / "sft" / "v2" / "README.md").read_text()
    assert "model-index" not in ckpt.split("---")[1]
    assert "No evaluation of these weights: no evaluation at step 2" in ckpt
    assert "eval        no evaluation at step 2" in ok(run(["models", "show", "sft@2"])).stdout


def test_tags_set_changed_and_removed(home, trained):
    assert ok(run(["models", "tag", "sft@1", "stage=prod", "data=tiny"])).stdout.strip() == \
        "sft@1 tags: data=tiny,stage=prod"
    ok(run(["models", "tag", "sft@1", "stage=canary", "--delete", "data"]))
    assert assets()["sft@1"]["tags"] == {"stage": "canary"}
    assert "tags        stage=canary" in ok(run(["models", "show", "sft@1"])).stdout
    refused(run(["models", "tag", "sft@1", "stage"]), 2, "a tag is KEY=VALUE")
    refused(run(["models", "tag", "sft@1", "--delete", "nope"]), 3, "model asset sft@1 has no tag nope")


def test_alias_moves_and_a_job_records_the_version_it_named(home, trained):
    assert ok(run(["models", "alias", "sft@1", "champion"])).stdout.strip() == "sft@champion -> sft@1"
    assert assets()["sft@1"]["aliases"] == ["champion"]
    assert ok(run(["models", "alias", "sft@2", "champion"])).stdout.strip() == \
        "sft@champion -> sft@2 (moved from sft@1)"
    a = assets()
    assert a["sft@1"]["aliases"] == [] and a["sft@2"]["aliases"] == ["champion"]
    listing = ok(run(["models", "list"])).stdout.splitlines()
    assert listing[0].split()[:7] == ["ASSET", "STATE", "KIND", "JOB", "SOURCE", "ALIASES", "TAGS"]
    assert listing[1].split()[5] == "champion"  # sft@2, newest first
    assert "sft@champion" in ok(run(["models", "show", "sft@champion"])).stdout

    ok(run(["submit", *FAST, "training.max_steps=1", "model.path=asset:sft@champion", "name=from-alias", "--wait"]))
    j = job(2)
    assert j.state == "success"
    assert j.config["model"]["asset"] == "sft@2" and j.config["model"]["asset_alias"] == "champion"
    assert j.config["model"]["path"] == str(home / "registry" / "sft" / "v2")
    from hpcft.ledger.store import Ledger

    assert [e.data["asset"] for e in Ledger().events(2) if e.kind == "asset"] == ["sft@2"]
    ok(run(["models", "alias", "sft@1", "champion"]))  # moved later: the job's lineage stays the version it used
    assert job(2).config["model"]["asset"] == "sft@2"
    ok(run(["publish", "2", "--name", "from-alias"]))
    card = (home / "registry" / "from-alias" / "v1" / "README.md").read_text()
    assert "job 2 started from model asset sft@2 (through alias champion at submit)" in card

    for args, code, words in (
            (["models", "alias", "sft@1", "v2"], 2, "ALIAS='v2': an alias is"),
            (["models", "alias", "sft", "best"], 2, "sft: name the version the alias points to"),
            (["models", "alias", "sft@9", "best"], 3, "model asset sft@9: not in the registry"),
            (["submit", *FAST, "model.path=asset:sft@nobody", "--dry-run"], 2,
             "model.path=asset:sft@nobody: model asset sft@nobody: no such alias")):
        refused(run(args), code, words)
    assert ok(run(["models", "alias", "sft", "champion", "--delete"])).stdout.strip() == \
        "removed alias sft@champion (it named version 1)"
    refused(run(["models", "show", "sft@champion"]), 3, "no such alias")


def _flip_byte(path: Path) -> None:
    mode = path.stat().st_mode
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 0xFF]))
    os.chmod(path, mode)


def test_a_flipped_byte_is_refused_at_submit_and_the_version_marked_corrupt(home, trained):
    weights = home / "registry" / "sft" / "v1" / "adapter_model.safetensors"
    assert (home / "registry" / "sft" / ".v1.verified.json").is_file()  # the publish's stamp: no re-hash needed
    ok(run(["submit", *FAST, "model.path=asset:sft@1", "--dry-run"]))
    _flip_byte(weights)
    r = refused(run(["submit", *FAST, "model.path=asset:sft@1", "--dry-run"]), 2,
                "model.path=asset:sft@1: model asset sft@1 is corrupt (1 file(s) do not match SHA256SUMS: "
                "adapter_model.safetensors: checksum differs)")
    assert "marked corrupt" in r.stderr
    a = assets()["sft@1"]
    assert a["state"] == "corrupt" and "adapter_model.safetensors: checksum differs" in a["reason"]
    assert ["sft@1", "corrupt"] in [x.split()[:2] for x in ok(run(["models", "list"])).stdout.splitlines()]
    refused(run(["submit", *FAST, "model.path=asset:sft@1", "--dry-run"]), 2, "model asset sft@1 is corrupt")
    refused(run(["models", "show", "sft@1", "--verify"]), 1, "model asset sft@1 is corrupt: 1 file(s)")
    _flip_byte(weights)  # restored
    assert ok(run(["models", "show", "sft@1", "--verify"])).stdout.rstrip().endswith("(marked published again)")
    assert assets()["sft@1"]["state"] == "published"


def test_a_dpo_asset_holds_no_pickle(home):
    ok(run(["submit", "+experiment=dpo_tiny", "executor=local", "training.max_steps=2", "name=dpo", "--wait"],
           timeout=900))
    dpo = next(j for j in (job(i) for i in range(3, 6)) if j.name == "dpo")
    final = Path(dpo.output_dir) / "final"
    assert (final / "training_args.bin").is_file()  # trl's pickle, in the run
    r = ok(run(["publish", str(dpo.id), "--name", "dpo"]))
    assert "leaving out training_args.bin" in r.stderr
    v1 = home / "registry" / "dpo" / "v1"
    names = [p.relative_to(v1).as_posix() for p in v1.rglob("*") if p.is_file()]
    assert names and not [n for n in names if not n.endswith((".safetensors", ".json", ".txt", ".model", ".jinja",
                                                                ".md")) and n != "SHA256SUMS"], names
    for p in v1.rglob("*"):
        if p.is_file():
            assert not p.read_bytes()[:2] == b"\x80\x04" and not p.read_bytes()[:4] == b"PK\x03\x04", p
    # the same content for other readers is a new version (a version's visibility never changes); then identical
    assert ok(run(["publish", str(dpo.id), "--name", "dpo", "--visibility", "all"])).stdout.startswith(
        "published dpo@2 ")
    assert "already published as dpo@2" in ok(run(["publish", str(dpo.id), "--name", "dpo", "--visibility",
                                                    "all"])).stdout


def test_a_full_registry_disk_names_the_registry_file_it_could_not_write(home, trained, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    fs = tmp_path / "small-registry"
    fs.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(fs)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    try:
        r = run(["publish", "1", "--name", "full"], env={"HPCFT_REGISTRY": str(fs)})
        errors = [x for x in r.stderr.splitlines() if not x.startswith("[hpcft] ")]  # progress lines, one error
        assert r.returncode == 1 and len(errors) == 1, r.stderr
        reason = assets("--all")["full@1"]["reason"]
        assert reason.startswith(f"cannot write {fs}/full/v1/") and "No space left on device" in reason, reason
        assert reason in errors[0]
        assert str(Path(job(1).output_dir)) not in reason
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
