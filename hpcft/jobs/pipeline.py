"""Pipelines: named stages submitted in one command, each stage queued at once behind the one it starts from.

A pipeline file (presets: conf/pipeline/*.yaml):

    name: sft-then-dpo                    # optional (default: the file's name)
    overrides: [executor=slurm]           # optional: applied to every stage
    stages:
      sft: [+experiment=sft_tiny]         # a stage: a list of overrides on the config groups ...
      dpo:                                # ... or a mapping
        from: sft                         # starts from that stage's final model (model.path=job:ID)
        overrides: [+experiment=dpo_tiny]
        after: [sft]                      # optional: more stages to wait for, without their model
        publish: {name: tiny-dpo}         # optional: publish.auto on success (true, or publish.* keys)

Every stage is composed and validated before anything is created (a bad stage creates nothing); then the stages
are created in order, each with `after` = the stages it names (hpcft.jobs.chain: Slurm `--dependency=afterok`, the
local executor's supervisor waits). A stage's jobs carry `pipeline: {id, name, stage[, chain]}` in their config
(no ledger column): the pipeline's id is its first job's id. A sweep (`-m`) over the first stage's overrides fans
out: every point gets its own chain of the later stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, open_dict

from hpcft.errors import ConfigError, HpcftError, NotFound
from hpcft.jobs import chain
from hpcft.states import LIVE, State

STAGE_KEYS = ("overrides", "from", "after", "publish")
FILE_KEYS = ("name", "overrides", "stages")
_STAGE_RE = re.compile(r"[a-z][a-z0-9_-]{0,39}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=,-]{0,63}")


@dataclass
class Stage:
    name: str
    overrides: List[str]
    source: Optional[str] = None  # `from:` the stage whose final model this one starts from
    after: List[str] = field(default_factory=list)  # the stages it waits for (`from` included)


@dataclass
class Spec:
    name: str
    stages: List[Stage]


# ------------------------------------------------------------------------------------------------ the file

def load(path: str | Path) -> Spec:
    """A pipeline file, checked: ConfigError (one line, naming the file and the key) for anything malformed."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the pipeline file ({e.strerror or e}); give a YAML file, e.g. "
                          "conf/pipeline/sft_then_dpo.yaml") from None
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{p}: not readable as YAML ({str(e).splitlines()[0]}); fix the file") from None
    return parse(data, p.stem, str(p))


def parse(data: Any, default_name: str, where: str = "pipeline") -> Spec:
    """The pipeline described by `data` (a parsed YAML mapping)."""
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict) or not data["stages"]:
        raise ConfigError(f"{where}: expected a mapping with `stages:` (stage name -> list of overrides); "
                          "see conf/pipeline/sft_then_dpo.yaml")
    unknown = [str(k) for k in data if k not in FILE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)}; the keys are {', '.join(FILE_KEYS)}")
    name = str(data.get("name") or default_name)
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: name={name!r}: use letters, digits and . _ - + @ = , (at most 64)")
    common = _overrides(data.get("overrides"), f"{where}: overrides")
    stages: List[Stage] = []
    for sname, body in data["stages"].items():
        stages.append(_stage(str(sname), body, [s.name for s in stages], common, where))
    return Spec(name, stages)


def _overrides(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, (str, int, float, bool)) for x in value):
        raise ConfigError(f"{where}: expected a list of overrides, e.g. [+experiment=sft_tiny, training.max_steps=20]")
    return [str(x) for x in value]


def _publish(value: Any, where: str) -> List[str]:
    """`publish: true` or `publish: {name: ..., visibility: ...}` -> publish.* overrides."""
    if value is None or value is False:
        return []
    if value is True:
        return ["publish.auto=true"]
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.publish: expected true or keys of publish (name, description, visibility)")
    out = ["publish.auto=true"]
    for k, v in value.items():
        if k == "auto":
            continue
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigError(f"{where}.publish.{k}: expected one value")
        text = str(v)
        out.append(f"publish.{k}={text if re.fullmatch(r'[A-Za-z0-9._@+-]*', text) else repr(text)}")
    return out


def _stage(name: str, body: Any, earlier: List[str], common: List[str], where: str) -> Stage:
    at = f"{where}: stages.{name}"
    if not _STAGE_RE.fullmatch(name):
        raise ConfigError(f"{at}: a stage name is lower-case letters, digits, _ and - (starting with a letter)")
    if isinstance(body, list) or body is None:
        body = {"overrides": body or []}
    if not isinstance(body, dict):
        raise ConfigError(f"{at}: expected a list of overrides or keys {', '.join(STAGE_KEYS)}")
    unknown = [str(k) for k in body if k not in STAGE_KEYS]
    if unknown:
        raise ConfigError(f"{at}: unknown key {', '.join(unknown)}; a stage's keys are {', '.join(STAGE_KEYS)}")
    source = body.get("from")
    after = [str(a) for a in (body.get("after") or [])] if isinstance(body.get("after") or [], list) else None
    if after is None:
        raise ConfigError(f"{at}.after: expected a list of earlier stages, e.g. after: [sft]")
    for ref, key in [(source, "from")] * (source is not None) + [(a, "after") for a in after]:
        if str(ref) not in earlier:
            raise ConfigError(f"{at}.{key}: {ref!r} is not an earlier stage; "
                              f"use one of: {', '.join(earlier) or '(none: this is the first stage)'}")
    overrides = common + _overrides(body.get("overrides"), f"{at}.overrides") + _publish(body.get("publish"), at)
    for ov in overrides:
        if ov.split("=", 1)[0].lstrip("+~") in ("after", "model.path", "pipeline") and source is not None:
            raise ConfigError(f"{at}: {ov}: set by `from: {source}`; drop it from the overrides")
    deps = list(dict.fromkeys(([str(source)] if source is not None else []) + after))
    return Stage(name, overrides, str(source) if source is not None else None, deps)


# ------------------------------------------------------------------------------------------------ submit

@dataclass
class Submitted:
    pipeline_id: int
    name: str
    chains: List[Dict[str, Any]]  # per chain (one, or one per point of the first stage's sweep): {stage: job}


def submit(spec: Spec, extra: Sequence[str] = (), multirun: bool = False, ledger=None) -> Submitted:
    """Validate every stage, then create and hand over the stages in order, each behind the ones it names. A
    hand-over that fails stops the stages already queued, then raises."""
    from hpcft.jobs import submit as hsubmit
    from hpcft.ledger.store import Ledger

    ledger = ledger or Ledger()
    first = spec.stages[0]
    plans = [hsubmit.plan(_stage_overrides(spec, first, extra), multirun=multirun)]
    for st in spec.stages[1:]:
        ovs = _stage_overrides(spec, st, extra)
        from hpcft.config.sweep import expand

        if len(expand(ovs)) > 1:
            raise ConfigError(f"stages.{st.name}: only the first stage may sweep (a=1,2); each of its points gets "
                              "its own chain of the later stages")
        plans.append(hsubmit.plan(ovs))
    if len({p.executor for p in plans}) > 1:
        raise ConfigError("a pipeline runs on one executor; set executor=... in the file's `overrides`")
    done: List[Any] = []
    try:
        return _create(ledger, spec, plans, done)
    except Exception:
        for job in reversed(done):  # nothing left half-queued: the stages already handed over are stopped
            _stop_quietly(ledger, job)
        raise


def _stage_overrides(spec: Spec, st: Stage, extra: Sequence[str]) -> List[str]:
    ovs = list(st.overrides) + list(extra)
    if not any(o.split("=", 1)[0].lstrip("+~") == "name" for o in ovs):
        ovs.append(f"name={spec.name}:{st.name}")
    return ovs


def _create(ledger, spec: Spec, plans: List[Any], done: List[Any]) -> Submitted:
    from hpcft.jobs import submit as hsubmit

    head = plans[0]
    firsts = hsubmit.create_jobs(ledger, head)
    pid = firsts[0].id
    for k, (job, cfg) in enumerate(zip(firsts, head.configs, strict=True)):
        info = {"id": pid, "name": spec.name, "stage": spec.stages[0].name} | ({"chain": k} if len(firsts) > 1 else {})
        _stamp(ledger, job, cfg, info)
    done += hsubmit.hand_over(ledger, head.executor, [ledger.get(j.id) for j in firsts])
    chains = [{spec.stages[0].name: j} for j in done]
    for k, links in enumerate(chains):
        for st, p in zip(spec.stages[1:], plans[1:], strict=True):
            cfg = p.configs[0].copy()
            info = {"id": pid, "name": spec.name, "stage": st.name} | ({"chain": k} if len(chains) > 1 else {})
            _link(cfg, st, links, info, head.sweep[k] if head.sweep else None)
            cfg = hsubmit.resolve_after(hsubmit.resolve_lineage(cfg, ledger), p.executor, ledger)
            (job,) = hsubmit.create_jobs(ledger, hsubmit.Plan([cfg], p.overrides, p.executor))
            ledger.add_event(job.id, "pipeline", f"stage {st.name} of pipeline {pid} ({spec.name})", **info)
            (job,) = hsubmit.hand_over(ledger, p.executor, [job])
            done.append(job)
            links[st.name] = job
    return Submitted(pid, spec.name, chains)


def _link(cfg: DictConfig, st: Stage, links: Dict[str, Any], info: Dict[str, Any], point: Optional[Dict]) -> None:
    """A later stage's config: its parents (this chain's jobs of the stages it names), its model from `from:`."""
    with open_dict(cfg):
        cfg.after = [links[s].id for s in st.after]
        cfg.pipeline = info
        if st.source is not None:
            cfg.model.path = f"job:{links[st.source].id}"
        if point and point.get("values"):
            from hpcft.config import checks
            from hpcft.config.sweep import point_name

            cfg.name = point_name(str(cfg.name), point["values"], checks.NAME_MAX)


def _stamp(ledger, job, cfg: DictConfig, info: Dict[str, Any]) -> None:
    """The first stage's jobs learn the pipeline's id (their own) once created: config.yaml and the ledger row."""
    from omegaconf import OmegaConf

    from hpcft.jobs.submit import write_config

    with open_dict(cfg):
        cfg.pipeline = info
    write_config(cfg, Path(job.output_dir))
    ledger.update(job.id, config=OmegaConf.to_container(cfg, resolve=True))
    from hpcft.ledger.deliver import record_events

    record_events(ledger, job.id, job.output_dir, [("pipeline", f"stage {info['stage']} of pipeline {info['id']} "
                                                    f"({info['name']})", info)])


def _stop_quietly(ledger, job) -> None:
    from hpcft.jobs.executors import get_executor

    try:
        get_executor(job.executor).stop(ledger, ledger.get(job.id))
    except HpcftError as e:
        print(f"[hpcft] job {job.id}: could not stop it ({e})", flush=True)


# ------------------------------------------------------------------------------------------------ show

def stages(ledger, pipeline_id: int) -> List[Any]:
    """The jobs of pipeline `pipeline_id` the acting user may see, in stage order (by id). NotFound when none."""
    from hpcft.ledger.access import AccessDenied, authorize

    rows = [j for j in ledger.search(sort=["created"]) if info_of(j).get("id") == int(pipeline_id)]
    visible = []
    for j in rows:
        try:
            authorize(ledger, j.id, "show")
        except (AccessDenied, NotFound):
            continue
        visible.append(j)
    if not visible:
        raise NotFound(f"pipeline {pipeline_id}: no such pipeline, or none of its jobs is visible to you; "
                       "a pipeline's id is its first job's id (`hpcft pipeline submit` prints it)")
    return sorted(visible, key=lambda j: j.id)


def info_of(job) -> Dict[str, Any]:
    return dict((job.config or {}).get("pipeline") or {})


def describe(ledger, jobs: Sequence[Any]) -> List[Dict[str, Any]]:
    """One row per stage job: stage, chain, job, state, cause, what it waits for, its model's parent, reason."""
    causes = ledger.causes([j.id for j in jobs])
    rows = []
    for j in jobs:
        info = info_of(j)
        rows.append({"stage": info.get("stage", "?"), "chain": info.get("chain"), "job": j.id, "name": j.name,
                     "state": j.state, "cause": causes.get(j.id), "after": chain.parents_of(j),
                     "parent": j.parent_id, "slurm": j.slurm_job_id, "reason": j.state_reason})
    return rows


# ------------------------------------------------------------------------------------------------ resume

def resubmit(ledger, before, executor) -> Any:
    """Hand a job whose new attempt was just claimed (`before`: its row as it ended) to `executor` behind its live
    parents, then re-queue the dependants its end had stopped (cause parent_failed) behind it. Called by
    hpcft.jobs.control for `hpcft resume` / `retry`. Returns the submitted row."""
    job = ledger.get(before.id)
    done = executor.submit(ledger, chain.set_dependency(ledger, [job]))[0]
    try:
        requeue_dependants(ledger, done, before)
    except HpcftError as e:  # the parent is queued again whatever happens to its dependants: say why
        ledger.add_event(done.id, "pipeline", f"its dependants could not be re-queued: {e}", error=str(e))
    return done


def requeue_dependants(ledger, parent, before) -> List[Any]:
    """The dependants of `parent` that its failed attempt (`before`) ended (stopped, cause parent_failed), or that
    still wait behind that attempt's Slurm job, get a new attempt queued behind `parent`'s new one; theirs follow."""
    from hpcft.jobs.executors import get_executor

    out = []
    for child in chain.dependants(ledger, parent.id):
        if State(child.state) in LIVE and child.slurm_job_id:  # still pending behind the failed attempt's Slurm job
            chain.stop_for_parent(ledger, child, before)
            child = ledger.get(child.id)
        if child.state != State.stopped.value or ledger.last_cause(child.id) != chain.PARENT_FAILED:
            continue
        reason = f"re-queued behind job {parent.id} (attempt {parent.attempt})"
        if not ledger.claim(child.id, child.state, child.attempt, reason, source="hpcft-pipeline"):
            continue
        ledger.add_event(child.id, "pipeline", reason, parent=parent.id)
        sent = get_executor(child.executor).submit(ledger, chain.set_dependency(ledger, [ledger.get(child.id)]))[0]
        out.append(sent)
        out += requeue_dependants(ledger, sent, child)
    return out
