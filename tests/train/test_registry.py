"""The model registry through the real CLI on a SQLite ledger: a tiny LoRA job really trains (checkpoints at steps 2
and 4), its checkpoint and final model are published, a LoRA run starts from `asset:NAME` and auto-publishes into a
registry that is read-only at that moment (publish_failed, the job still success), `republish` succeeds once it is
writable again, the asset exports merged and transformers loads it and generates text.

The tests of this module share one HPCFT_HOME and run in file order (each builds on the one before).
"""

import json
import os
import re
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from support import hpcft_cli

pytestmark = [pytest.mark.train, pytest.mark.slow]
FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.learning_rate=0.01"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("registry") / "hpcft-home"
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


def assets(*args):
    """`hpcft models list --json ARGS` as {ref: row}."""
    return {a["ref"]: a for a in json.loads(ok(run(["models", "list", "--json", *args])).stdout)}


def rows():
    """Every asset row, read in-process (cheaper than the CLI): {ref: ModelAsset}."""
    from hpcft.ledger import assets as registry_db
    from hpcft.ledger.store import Ledger

    return {r.ref: r for r in registry_db.search(Ledger())}


def job(job_id):
    from hpcft.ledger.store import Ledger

    return Ledger().get(job_id)


def events(job_id):
    from hpcft.ledger.store import Ledger

    return Ledger().events(job_id)


@contextmanager
def read_only(path: Path):
    """`path` read-only for this machine's processes: a read-only bind mount over itself as root (root ignores
    permission bits), else chmod a-w."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield
        finally:
            os.chmod(path, 0o755)
        return
    r = subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make {path} read-only here: {r.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture(scope="module")
def trained(home):
    """Job 1: tiny LoRA, 4 steps, checkpoints at steps 2 and 4, evaluated on validation and test."""
    ok(run(["submit", *FAST, "training.max_steps=4", "training.save_strategy=steps", "training.save_interval=2",
            "name=sft-lora", "--wait"]))
    return 1


def test_bad_names_and_settings_are_refused_before_anything_is_recorded(trained):
    from hpcft.registry import names, publish as registry
    from hpcft.errors import ConfigError, NotFound
    from hpcft.ledger.store import Ledger

    for args, code, words in (  # through the CLI: exit code and one line
            (["publish", "1", "--name", "bad name"], 2, "--name='bad name': a model asset name is"),
            (["publish", "7", "--name", "x"], 3, "job 7"),
            (["submit", *FAST, "publish.visibility=world", "--dry-run"], 2, "publish.visibility=world")):
        r = run(args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and words in r.stderr, r.stderr
    for kwargs, err, words in (  # the same rules in-process
            ({"name": "x", "visibility": "world"}, ConfigError, "--visibility=world: unknown visibility"),
            ({"name": "x", "checkpoint": "step-3"}, ConfigError, "no such complete checkpoint (newest: step-00000002, "
                                                                  "step-00000004)"),
            ({"name": "-x"}, ConfigError, "starting with a letter or digit")):
        with pytest.raises(err, match=re.escape(words)):
            registry.publish(Ledger(), 1, **kwargs)
    with pytest.raises(NotFound, match="model asset nothing@1: not in the registry"):
        names.find(Ledger(), "nothing@1")
    assert rows() == {}


def test_publish_a_checkpoint_and_the_final_model(home, trained):
    import torch
    from safetensors.torch import load_file

    ok(run(["publish", "1", "--checkpoint", "step-2", "--name", "sft", "--description", "after 2 steps"]))
    ok(run(["publish", "1", "--name", "sft"]))
    a = assets()
    assert [a["sft@1"]["source"], a["sft@2"]["source"]] == ["step-00000002", "final"]
    assert all(x["state"] == "published" and x["kind"] == "lora" for x in a.values())
    run1 = Path(job(1).output_dir)
    v1, v2 = Path(a["sft@1"]["path"]), Path(a["sft@2"]["path"])
    assert v1 == home / "registry" / "sft" / "v1"
    assert not [p for p in v1.parent.iterdir() if ".tmp-" in p.name]  # no staging left (.vN.verified.json: stamps)

    # the checkpoint became a peft adapter holding exactly the trained LoRA weights of step 2, on its own base copy
    ckpt = load_file(run1 / "checkpoints" / "step-00000002" / "trainable.safetensors")
    adapter = load_file(v1 / "adapter_model.safetensors")
    assert sorted(adapter) == sorted(k.replace(".default", "") for k in ckpt)
    assert all(torch.equal(adapter[k.replace(".default", "")], v) for k, v in ckpt.items())
    final = load_file(run1 / "final" / "adapter_model.safetensors")
    assert any(not torch.equal(final[k], adapter[k]) for k in final)  # step 4 differs from step 2
    from hpcft.registry import files as registry

    for v in (v1, v2):
        cfg = json.loads((v / "adapter_config.json").read_text())
        assert cfg["base_model_name_or_path"] == str(v / "base")  # applied to its recorded base
        assert (v / "base" / "model.safetensors").read_bytes() == (run1 / "base" / "model.safetensors").read_bytes()
        assert registry.verify(v) == []
    assert ok(run(["models", "show", "sft@2", "--verify"])).stdout.rstrip().endswith("matches SHA256SUMS")
    # the second version's identical base is stored once (a hard link to the first's)
    assert (v2 / "base" / "model.safetensors").stat().st_ino == (v1 / "base" / "model.safetensors").stat().st_ino
    sums = dict(reversed(line.split("  ", 1)) for line in (v2 / "SHA256SUMS").read_text().splitlines())
    assert {"README.md", "adapter_model.safetensors", "adapter_config.json", "base/model.safetensors"} <= set(sums)
    assert subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=v2).returncode == 0

    # the model card: Hugging Face front matter with the job's own evaluation figures
    card = (v2 / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    summary = json.loads((run1 / "summary.json").read_text())
    assert front["library_name"] == "peft" and front["pipeline_tag"] == "text-generation"
    assert front["hpcft"]["job"] == 1 and front["hpcft"]["step"] == 4 and front["datasets"] == ["tiny_sft"]
    figures = {m["name"]: m["value"] for r in front["model-index"][0]["results"] for m in r["metrics"]}
    assert figures["validation loss"] == pytest.approx(summary["eval"]["validation"]["loss"])
    assert figures["test perplexity"] == pytest.approx(summary["eval"]["test"]["perplexity"])
    assert "job 1 trained model tiny built from a config" in card
    assert "after 2 steps" in (v1 / "README.md").read_text()
    assert [e.kind for e in events(1) if e.kind.startswith("publish")] == ["publish", "published"] * 2


def test_lora_from_an_asset_auto_publish_into_a_read_only_registry_then_republish(home, trained):
    registry = home / "registry"
    with read_only(registry):
        r = ok(run(["submit", *FAST, "training.max_steps=3", "model.path=asset:sft", "name=from-asset",
                    "publish.auto=true", "publish.visibility=all", "training.save_strategy=epoch"],
                   env={"HPCFT_TEST_STEP_DELAY_S": "1"}))
        assert "submitted job 2" in r.stdout
        # a version a queued or running job uses cannot be deleted; the refusal names the job
        d = run(["models", "delete", "sft@2"])
        assert d.returncode == 4 and "model asset sft@2 is in use by job 2 (" in d.stderr, d.stderr
        deadline = time.time() + 300
        while not any(e.kind == "publish_failed" for e in events(2)):
            assert time.time() < deadline, job(2).state
            time.sleep(1)
    j = job(2)
    assert j.state == "success" and j.state_reason == "trainer finished"  # the failed publish changed nothing
    cfg = j.config
    assert cfg["model"]["asset"] == "sft@2" and cfg["model"]["path"] == str(registry / "sft" / "v2")
    assert any(e.kind == "asset" and e.data["asset"] == "sft@2" for e in events(2))
    assert "model asset  sft@2" in ok(run(["show", "2"])).stdout
    a = assets()["from-asset@1"]  # (hpcft models list --json)
    assert a["state"] == "publish_failed", a
    assert ("Read-only file system" if os.geteuid() == 0 else "Permission denied") in a["reason"], a["reason"]
    assert not (registry / "from-asset").exists() or not any((registry / "from-asset").iterdir())

    r = ok(run(["models", "republish", "from-asset@1"]))
    assert "published from-asset@1" in r.stdout
    a = rows()["from-asset@1"]
    assert a.state == "published" and a.visibility == "all" and a.state_reason is None
    lineage = a.meta["lineage"]
    assert lineage[1] == "job 2 started from model asset sft@2" and lineage[2].startswith("sft@2: final of job 1")
    assert [e.kind for e in events(2) if e.kind.startswith("publish")] == [
        "publish", "publish_failed", "publish", "published"]

    # job 2 trained on sft@2 merged into its base: its base/ equals that merge
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.tensor([[5, 6, 7, 8, 9]])
    sft = registry / "sft" / "v2"
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft / "base"), sft).merge_and_unload()
    run2 = Path(job(2).output_dir)
    assert torch.allclose(AutoModelForCausalLM.from_pretrained(run2 / "base")(ids).logits, expected(ids).logits,
                          atol=1e-5)


def test_export_merged_loads_in_transformers_and_generates(home, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    ok(run(["models", "export", "from-asset", "--merge", "-o", str(out)]))
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    run2 = Path(job(2).output_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(run2 / "base"), run2 / "final")
    ids = tok("Question: what is 2+2?", return_tensors="pt")
    assert torch.allclose(model(**ids).logits, adapted(**ids).logits, atol=1e-5)
    gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert gen.shape[1] == ids["input_ids"].shape[1] + 8
    assert isinstance(tok.decode(gen[0, ids["input_ids"].shape[1]:]), str)
    assert yaml.safe_load((out / "README.md").read_text().split("---")[1])["library_name"] == "transformers"
    from hpcft.registry import use as registry
    from hpcft.errors import ConfigError
    from hpcft.ledger.store import Ledger

    with pytest.raises(ConfigError, match="exists and is not empty"):
        registry.export(Ledger(), "from-asset", out)


def test_delete_keeps_the_number_and_the_other_versions(home):
    ok(run(["models", "delete", "sft@1"]))
    assert not (home / "registry" / "sft" / "v1").exists()
    from hpcft.registry import files, names, publish as registry
    from hpcft.errors import StateError
    from hpcft.ledger.store import Ledger

    assert files.verify(home / "registry" / "sft" / "v2") == []  # its hard-linked base survives
    assert "sft@1" not in [r.ref for r in names.visible(Ledger())] and assets("--all")["sft@1"]["state"] == "deleted"
    registry.publish(Ledger(), 1, checkpoint="latest", name="sft")  # (in-process: the CLI's is tested above)
    assert rows()["sft@3"].source == "step-00000004"  # a deleted number is never reused
    with pytest.raises(StateError, match="only a publish_failed version can be republished"):
        registry.republish(Ledger(), "sft@3")


def test_a_full_model_checkpoint_converts_to_hugging_face_weights(tmp_path):
    """hpcft's own checkpoint of full fine-tuning (trainable.safetensors = every weight) -> model.safetensors +
    the base's config, loadable by transformers with the same outputs."""
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM

    from hpcft.registry import files, stage as registry
    from hpcft.train.checkpoint import save_trainable
    from hpcft.train.modeling import base_model_path

    model_cfg = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "model" / "tiny.yaml")
    del model_cfg["defaults"]
    out = tmp_path / "run"
    base = base_model_path(model_cfg, out)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # "trained"
    (out / "checkpoints" / "step-00000001").mkdir(parents=True)
    save_trainable(model, out / "checkpoints" / "step-00000001" / "trainable.safetensors")
    job = SimpleNamespace(id=1, output_dir=str(out), config={"model": OmegaConf.to_container(model_cfg)})
    src = registry.Source("step-00000001", out / "checkpoints" / "step-00000001", 1)
    dest = tmp_path / "asset"
    dest.mkdir()
    registry.stage_checkpoint(job, src, dest, files.quiet)
    assert registry.describe(dest)["kind"] == "model"
    loaded = AutoModelForCausalLM.from_pretrained(dest)
    ids = torch.tensor([[3, 4, 5]])
    assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)
