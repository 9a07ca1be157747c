"""Pipelines and `--after` without a cluster: the YAML, the sbatch dependency, the checks at submit, what the start
and `sync` do with a parent's end (a real SQLite ledger; the real cluster: tests/cluster/test_pipeline_slurm.py)."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpcft import paths
from hpcft.errors import ConfigError
from hpcft.jobs import chain
from hpcft.jobs import pipeline as P
from hpcft.slurm import commands as C
from hpcft.slurm.sbatch import dependency_option, sbatch_options, to_argv, to_lines
from hpcft.states import State
from support.slurm_fixtures import (SACCT_DEPENDANT_CANCELLED, SQUEUE_DEPENDENCY_NEVER,
                                    SQUEUE_DEPENDENCY_WAITING)

PRESETS = sorted((paths.conf_dir() / "pipeline").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------ the YAML

def test_stages_as_lists_or_mappings_in_file_order():
    spec = P.parse({"overrides": ["executor=local"], "stages": {
        "sft": ["+experiment=sft_tiny"],
        "dpo": {"from": "sft", "overrides": ["+experiment=dpo_tiny"], "publish": {"name": "tiny-dpo"}},
        "eval": {"after": ["sft", "dpo"], "overrides": ["+experiment=sft_tiny"], "publish": True}}}, "p")
    assert [s.name for s in spec.stages] == ["sft", "dpo", "eval"] and spec.name == "p"
    sft, dpo, ev = spec.stages
    assert sft.overrides == ["executor=local", "+experiment=sft_tiny"] and sft.after == [] and sft.source is None
    assert dpo.source == "sft" and dpo.after == ["sft"]
    assert dpo.overrides[-2:] == ["publish.auto=true", "publish.name=tiny-dpo"]
    assert ev.source is None and ev.after == ["sft", "dpo"] and ev.overrides[-1] == "publish.auto=true"


@pytest.mark.parametrize("data,says", [
    ({"stages": {}}, "expected a mapping with `stages:`"),
    ([1, 2], "expected a mapping with `stages:`"),
    ({"stages": {"a": []}, "stage": 1}, "unknown key stage"),
    ({"stages": {"a": [], "b": {"from": "c"}}}, "stages.b.from: 'c' is not an earlier stage; use one of: a"),
    ({"stages": {"a": {"from": "a"}}}, "is not an earlier stage; use one of: (none: this is the first stage)"),
    ({"stages": {"b": {"after": ["a"]}, "a": []}}, "stages.b.after: 'a' is not an earlier stage"),
    ({"stages": {"a": {"form": "x"}}}, "stages.a: unknown key form; a stage's keys are overrides, from, after, publish"),
    ({"stages": {"Bad Name": []}}, "a stage name is lower-case letters"),
    ({"stages": {"a": "lr=1"}}, "expected a list of overrides or keys"),
    ({"stages": {"a": {"overrides": "x=1"}}}, "stages.a.overrides: expected a list of overrides"),
    ({"stages": {"a": [], "b": {"from": "a", "overrides": ["model.path=/x"]}}}, "model.path=/x: set by `from: a`"),
    ({"stages": {"a": {"publish": "yes"}}}, "stages.a.publish: expected true or keys of publish"),
    ({"name": "no spaces", "stages": {"a": []}}, "name='no spaces'"),
])
def test_malformed_pipelines_are_refused_in_one_line(data, says):
    with pytest.raises(ConfigError) as e:
        P.parse(data, "p", "f.yaml")
    assert says in str(e.value) and "\n" not in str(e.value)


def test_unreadable_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the pipeline file"):
        P.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages: [unclosed\n")
    with pytest.raises(ConfigError, match="not readable as YAML"):
        P.load(bad)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_parses_and_every_stage_validates(preset, hpcft_home):
    from hpcft.jobs import submit as hsubmit

    text = preset.read_text()
    assert text.startswith("# Launch: hpcft pipeline submit " + preset.stem)
    spec = P.load(preset)
    assert len(spec.stages) >= 2 and all(s.source for s in spec.stages[1:])
    for st in spec.stages:
        hsubmit.plan(P._stage_overrides(spec, st, ["executor=local"]))  # composes and validates


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"sft_then_dpo", "pretrain_then_sft_then_publish"}


# ------------------------------------------------------------------------------------------------ sbatch

def test_the_dependency_is_one_option_of_the_one_mapping():
    assert dependency_option([]) == {}
    assert dependency_option(["577", "589_1", "577"]) == {"dependency": "afterok:577:589_1"}
    opts = sbatch_options({"time": "10"}, job_name="p:dpo", after=["577"])
    assert to_argv(opts)[:2] == ["--job-name=p:dpo", "--dependency=afterok:577"]
    assert "#SBATCH --dependency=afterok:577" in to_lines(opts)
    # a ledger row's resources carry the parents' Slurm ids (hpcft.jobs.chain.set_dependency)
    assert sbatch_options({"time": "10", "after": ["12"]})["dependency"] == "afterok:12"
    assert "dependency" not in sbatch_options({"time": "10", "after": []})
    for bad in ("12;rm", "afterok:12", "", "12,13"):
        with pytest.raises(ConfigError, match="not a Slurm job id"):
            dependency_option([bad])


def test_extra_may_not_set_the_dependency_nor_kill_on_invalid_dep():
    with pytest.raises(ConfigError, match="--dependency is set by after"):
        sbatch_options({"extra": {"dependency": "afterok:1"}})
    with pytest.raises(ConfigError, match="parent_failed"):
        sbatch_options({"extra": {"kill-on-invalid-dep": "yes"}})


def test_captured_squeue_and_sacct_of_a_dependant():
    waiting = C.parse_squeue_jobs(SQUEUE_DEPENDENCY_WAITING)
    assert waiting["594"].state == "PENDING" and waiting["594"].reason == "Dependency"
    never = C.parse_squeue_jobs(SQUEUE_DEPENDENCY_NEVER)
    assert never["594"].reason == "DependencyNeverSatisfied" and never["593"].state == "FAILED"
    rec = C.parse_sacct(SACCT_DEPENDANT_CANCELLED)["594"]
    assert rec.slurm_state == "CANCELLED" and rec.start == "None" and rec.nodelist == "None assigned"  # no allocation


# ------------------------------------------------------------------------------------------------ submit checks

def _ledger():
    from hpcft.ledger.store import Ledger

    return Ledger()


def _job(ledger, state="queued", executor="slurm", slurm="100", access="none", after=(), out=None, **config):
    cfg = {"after": list(after), **config}
    job = ledger.create_job(name="j", owner=ledger.user, executor=executor, state=State.queued.value, config=cfg,
                            resources={"time": "10"}, access=access, output_dir=str(out or ""))
    if state != "queued":
        ledger.transition(job.id, state, "test")
    return ledger.update(job.id, slurm_job_id=slurm)


def test_after_option_and_its_errors(hpcft_home):
    from hpcft.errors import NotFound
    from hpcft.jobs.submit import after_overrides

    assert after_overrides(None) == [] and after_overrides("12, 13") == ["after=[12,13]"]
    for bad in ("", "a", "12;13", "-1"):
        with pytest.raises(ConfigError, match="--after .*expected job ids"):
            after_overrides(bad)
    ledger = _ledger()
    live, ok, failed = _job(ledger), _job(ledger, "success"), _job(ledger, "error")
    local = _job(ledger, executor="local", slurm=None)
    assert chain.check_after(ledger, [live.id, ok.id, live.id], "none", "slurm") == [live.id, ok.id]
    with pytest.raises(ConfigError, match=f"job {failed.id} ended error, so a job behind it would never start"):
        chain.check_after(ledger, [failed.id], "none", "slurm")
    with pytest.raises(ConfigError, match="a Slurm job can wait only for Slurm jobs"):
        chain.check_after(ledger, [local.id], "none", "slurm")
    assert chain.check_after(ledger, [local.id], "none", "local") == [local.id]
    with pytest.raises(NotFound):
        chain.check_after(ledger, [999], "none", "slurm")


def test_no_chaining_behind_a_job_one_cannot_read_and_access_capped(hpcft_home, monkeypatch):
    from hpcft.ledger.access import AccessDenied

    monkeypatch.setenv("HPCFT_USER", "alice")
    ledger = _ledger()
    private = _job(ledger)
    monkeypatch.setenv("HPCFT_USER", "bob")
    with pytest.raises(AccessDenied):
        chain.check_after(_ledger(), [private.id], "none", "slurm")
    monkeypatch.setenv("HPCFT_USER", "alice")
    with pytest.raises(ConfigError, match="may not be more open than its parent"):
        chain.check_after(_ledger(), [private.id], "ro", "slurm")


def test_a_live_parent_named_by_job_id_is_waited_for(hpcft_home):
    from hpcft.jobs import submit as hsubmit

    ledger = _ledger()
    parent = _job(ledger, executor="local", slurm=None)
    p = hsubmit.plan(["executor=local", f"model.path=job:{parent.id}", "method=lora"])
    cfg = p.configs[0]
    assert list(cfg.after) == [parent.id] and cfg.model.path == f"job:{parent.id}" and cfg.model.parent_job == parent.id
    ledger.transition(parent.id, "error", "test")
    with pytest.raises(ConfigError, match="has no final model"):
        hsubmit.plan(["executor=local", f"model.path=job:{parent.id}", "method=lora"])


# ------------------------------------------------------------------------------------------------ start, sync

def test_a_failed_parent_stops_its_dependants_and_theirs(hpcft_home):
    ledger = _ledger()
    parent = _job(ledger, slurm=None)
    child = _job(ledger, slurm=None, after=[parent.id])
    grandchild = _job(ledger, slurm=None, after=[child.id])
    other = _job(ledger, slurm=None)
    assert chain.settle_dependants(ledger, [child, grandchild, other]) == 0  # the parent is still live: nothing
    ledger.transition(parent.id, "error", "trainer exited with code 2", cause="bad_input")
    assert chain.settle_dependants(ledger, [child, grandchild, other]) == 2
    for j, named in ((child, parent), (grandchild, child)):
        row = ledger.get(j.id)
        assert row.state == "stopped" and ledger.last_cause(j.id) == chain.PARENT_FAILED
        assert f"parent job {named.id}" in row.state_reason and f"hpcft resume {named.id}" in row.state_reason
        assert [e.data["parent"] for e in ledger.events(j.id) if e.kind == "parent_failed"] == [named.id]
    assert ledger.get(other.id).state == "queued"
    assert chain.settle_dependants(ledger, [ledger.get(child.id)]) == 0  # once


def test_at_start_a_parent_s_model_is_resolved_and_recorded(hpcft_home, tmp_path):
    ledger = _ledger()
    final = tmp_path / "parent" / "final"
    final.mkdir(parents=True)
    parent = _job(ledger, "success", out=tmp_path / "parent")
    out = tmp_path / "child"
    out.mkdir()
    config = {"after": [parent.id], "model": {"path": f"job:{parent.id}", "source": "pretrained"},
              "method": {"name": "dpo", "reward_model": None}}
    (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(config)))
    child = _job(ledger, out=out, **{k: v for k, v in config.items() if k != "after"}, after=[parent.id])
    assert chain.start_after_parents(ledger, child.id) is True
    row = ledger.get(child.id)
    assert row.parent_id == parent.id and row.config["model"]["path"] == str(final)
    on_disk = OmegaConf.load(out / "config.yaml")
    assert on_disk.model.path == str(final) and on_disk.model.tokenizer == str(final)
    assert [e.data["parent"] for e in ledger.events(child.id) if e.kind == "lineage"] == [parent.id]
    assert chain.start_after_parents(ledger, child.id) is True  # a restart: nothing left to resolve
    assert len([e for e in ledger.events(child.id) if e.kind == "lineage"]) == 1


def test_at_start_a_parent_that_did_not_succeed_stops_the_job(hpcft_home):
    ledger = _ledger()
    parent = _job(ledger, "expired", slurm=None)
    child = _job(ledger, slurm=None, after=[parent.id])
    assert chain.start_after_parents(ledger, child.id) is False
    assert ledger.get(child.id).state == "stopped" and ledger.last_cause(child.id) == chain.PARENT_FAILED


def test_a_job_without_parents_starts_untouched(hpcft_home):
    ledger = _ledger()
    job = _job(ledger, slurm=None)
    assert chain.start_after_parents(ledger, job.id) is True and ledger.events(job.id)[-1].kind != "lineage"
    assert Path(paths.conf_dir(), "pipeline").is_dir()


def test_cli_errors_are_one_line_and_create_nothing(hpcft_home, tmp_path):
    import subprocess

    from support import hpcft_cli

    def cli(*args):
        return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)

    bad = tmp_path / "p.yaml"
    bad.write_text("stages:\n  sft: [+experiment=sft_tiny, executor=local]\n  dpo: {from: sfd}\n")
    for args, code, says in [
        (["pipeline", "submit", str(tmp_path / "missing.yaml")], 2, "cannot read the pipeline file"),
        (["pipeline", "submit", str(bad)], 2, "stages.dpo.from: 'sfd' is not an earlier stage; use one of: sft"),
        (["submit", "executor=local", "--after", "x"], 2, "--after x: expected job ids"),
        (["submit", "executor=local", "--after", "7"], 3, "job 7"),
        (["pipeline", "show", "9"], 3, "pipeline 9: no such pipeline"),
    ]:
        r = cli(*args)
        assert r.returncode == code and says in r.stderr and r.stderr.count("\n") == 1, (args, r.stdout, r.stderr)
    assert not (hpcft_home / "runs").exists() or not any((hpcft_home / "runs").iterdir())
