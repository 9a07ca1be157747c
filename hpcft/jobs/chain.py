"""Jobs chained behind other jobs: `after` (Slurm `--dependency=afterok`) and a `job:ID` of a parent still running.

The lifecycle of a dependant, in one place:
- at submit (`check_after`, `job_ref`): every parent exists, the acting user may read it, the child is no more open
  than it (hpcft.ledger.access), and it has not ended otherwise than in success (a job behind it would never start);
- at hand-over (`set_dependency`): the ledger row's resources carry the Slurm ids of the parents still live, which
  the one resources -> sbatch mapping (hpcft.slurm.sbatch.sbatch_options) turns into `--dependency=afterok:...`;
- at start (`start_after_parents`, called by the worker before the trainer): the local executor's supervisor waits
  for the parents here; then a `job:ID` left in model.path / method.reward_model becomes that parent's final model
  (config.yaml and the ledger row rewritten, parent_id and a `lineage` event recorded; a LoRA adapter is merged
  into its base by the trainer, exactly as for a parent that had ended at submit);
- when a parent ends in error, stopped or expired (`settle_dependants`, on `hpcft sync`; Slurm shows the child
  pending with reason DependencyNeverSatisfied): the child is recorded `stopped` with cause parent_failed naming
  the parent, and its Slurm job cancelled before it had an allocation. `stopped` is never notified
  (hpcft.ledger.notify): the failed stage's own message is the only one.

This module imports no executor (the worker and the Slurm executor call it); re-queueing dependants behind a
resumed parent needs an executor and lives in hpcft.jobs.pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hpcft.errors import ConfigError, HpcftError
from hpcft.states import LIVE, State, is_terminal

PARENT_FAILED = "parent_failed"  # a job's parent ended in error, stopped or expired: the job never started
WAIT_POLL_S = 2.0  # the local executor's supervisor looks at its parents' states this often
REF_KEYS = ("model.path", "method.reward_model")


# ------------------------------------------------------------------------------------------------ submit

def ref_id(ref: str, key: str) -> int:
    """The job id of `job:ID`; ConfigError (one line) otherwise."""
    try:
        return int(str(ref)[4:])
    except ValueError:
        raise ConfigError(f"{key}={ref}: expected job:ID with a numeric id, e.g. {key}=job:12") from None


def readable_parent(ledger, job_id: int, key: str, access: str, cap: bool = True):
    """The job `job_id` when the acting user may read it (AccessDenied / NotFound otherwise) and a job with `access`
    may be built on it (`cap`: no more open than the parent, hpcft.ledger.access.cap_to_parent)."""
    from hpcft.ledger.access import authorize, cap_to_parent

    src, _ = authorize(ledger, int(job_id), "clone")  # building on a job needs read access to it
    if cap:
        cap_to_parent(access, src.access, int(job_id))
    return src


def final_model(src, key: str, ref: str) -> Path:
    """The final model directory of a job that ended in success; ConfigError otherwise."""
    final = Path(src.output_dir) / "final"
    if src.state != State.success.value or not final.is_dir():
        raise ConfigError(f"{key}={ref}: job {src.id} has no final model (state {src.state}); "
                          "use a job that ended in success, or one still queued or running (it is then waited for)")
    return final


def check_after(ledger, after: Sequence[Any], access: str, executor: str) -> List[int]:
    """The parents named by `after` as ledger ids, once each may be waited for: readable, no more closed than the
    child, live or ended in success, and (for a Slurm child) a live parent must be a Slurm job. ConfigError or
    AccessDenied (one line) otherwise."""
    ids: List[int] = []
    for a in after:
        try:
            jid = int(str(a).strip())
        except ValueError:
            raise ConfigError(f"after={a!r}: not a job id; e.g. --after 12,13 (see `hpcft list`)") from None
        src = readable_parent(ledger, jid, "after", access)
        state = State(src.state)
        if is_terminal(state) and state != State.success:
            raise ConfigError(f"after={jid}: job {jid} ended {state.value}, so a job behind it would never start; "
                              f"`hpcft resume {jid}` first, or leave it out of --after")
        if state in LIVE and executor == "slurm" and src.executor != "slurm":
            raise ConfigError(f"after={jid}: job {jid} runs on the {src.executor} executor; a Slurm job can wait "
                              "only for Slurm jobs: submit both with executor=slurm, or wait for it to end")
        if jid not in ids:
            ids.append(jid)
    return ids


def refs_of(config: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(key, `job:ID`) of the job references a config still holds (model.path, method.reward_model)."""
    out = []
    for key in REF_KEYS:
        group, _, name = key.partition(".")
        value = (config.get(group) or {}).get(name)
        if isinstance(value, str) and value.startswith("job:"):
            out.append((key, value))
    return out


# ------------------------------------------------------------------------------------------------ hand-over

def parents_of(job) -> List[int]:
    return [int(p) for p in ((job.config or {}).get("after") or [])]


def set_dependency(ledger, jobs: Sequence[Any]) -> List[Any]:
    """Before a Slurm hand-over: each job's resources carry the Slurm ids of its parents still live (`after`,
    read by hpcft.slurm.sbatch.sbatch_options); a parent that already succeeded needs no dependency. Returns the
    rows as updated."""
    out = []
    for job in jobs:
        parents = parents_of(job)
        if job.executor != "slurm" or not parents and "after" not in (job.resources or {}):
            out.append(job)
            continue
        ids = []
        for pid in parents:
            p = ledger.get(pid)
            if State(p.state) in LIVE and p.slurm_job_id:
                ids.append(str(p.slurm_job_id))
        out.append(ledger.update(job.id, resources=dict(job.resources or {}, after=ids)))
    return out


# ------------------------------------------------------------------------------------------------ start

def start_after_parents(ledger, job_id: int, wait: bool = False) -> bool:
    """Called by the worker before the trainer starts (rank 0). True when the job may run: every parent ended in
    success and every `job:ID` the config still holds is resolved (lineage recorded). False when it must not: a
    parent did not succeed (the job is recorded `stopped`, cause parent_failed), it stopped while waiting, or a
    parent's model is missing (recorded `error`). `wait` (local executor): wait here until the parents have ended."""
    job = ledger.get(job_id)
    parents = parents_of(job)
    if not parents and not refs_of(job.config or {}):
        return True
    db = database(ledger)
    rows = _wait_for(db, job_id, parents) if wait else [db.get(p) for p in parents]
    if rows is None:
        return False
    failed = next((p for p in rows if p.state != State.success.value), None)
    if failed is not None:
        stop_for_parent(ledger, db.get(job_id), failed)
        return False
    try:
        resolve_refs(ledger, db.get(job_id))
    except HpcftError as e:
        ledger.transition(job_id, State.error, f"could not start from its parent: {e}", cause="bad_input")
        return False
    return True


def database(ledger):
    """The ledger itself: the worker hands a JournaledLedger (hpcft.ledger.courier), whose `get` is for its own job
    only; other jobs' rows and the row's config are read and written in the database."""
    return getattr(ledger, "ledger", ledger)


def _wait_for(ledger, job_id: int, parents: Sequence[int]) -> Optional[List[Any]]:
    """The parents' rows once all have ended; None when the waiting job itself stopped being live."""
    announced = False
    while True:
        rows = [ledger.get(p) for p in parents]
        if all(is_terminal(p.state) for p in rows) or any(is_terminal(p.state) and p.state != "success"
                                                            for p in rows):
            return rows
        if State(ledger.get(job_id).state) not in LIVE:
            return None
        if not announced:
            waiting = [str(p.id) for p in rows if not is_terminal(p.state)]
            print(f"[hpcft] job {job_id} waits for job(s) {', '.join(waiting)}", flush=True)
            announced = True
        time.sleep(WAIT_POLL_S)


def resolve_refs(ledger, job) -> Dict[str, Any]:
    """Replace the `job:ID` references of a starting job's config (config.yaml and its ledger row) by the parents'
    final models, as `hpcft.jobs.submit.resolve_lineage` does at submit for a parent that had ended. Returns the
    config."""
    from omegaconf import OmegaConf

    from hpcft.config import compose

    refs = refs_of(job.config or {})
    if not refs:
        return job.config
    db = database(ledger)
    path = Path(job.output_dir) / "config.yaml"
    cfg = compose.from_yaml_file(path)
    lineage = []
    for key, ref in refs:
        pid = ref_id(ref, key)
        final = str(final_model(db.get(pid), key, ref))
        if key == "model.path":
            OmegaConf.update(cfg, "model.path", final)
            OmegaConf.update(cfg, "model.source", "pretrained")
            OmegaConf.update(cfg, "model.tokenizer", final)
            OmegaConf.update(cfg, "model.parent_job", pid, force_add=True)
        else:
            OmegaConf.update(cfg, key, final)
        lineage.append((key, pid, final))
    tmp = path.with_name("config.yaml.tmp")
    tmp.write_text(compose.to_yaml(cfg))
    tmp.replace(path)
    config = OmegaConf.to_container(cfg, resolve=True)
    parent = next((pid for key, pid, _ in lineage if key == "model.path"), job.parent_id)
    db.update(job.id, config=config, parent_id=parent)
    for key, pid, final in lineage:  # in the database, like the row: the journaled ledger's transition follows
        db.add_event(job.id, "lineage", f"{key}: starts from the final model of job {pid} ({final})", key=key,
                         parent=pid, path=final)
    return config


# ------------------------------------------------------------------------------------------------ failed parents

def stop_for_parent(ledger, job, parent) -> bool:
    """Record `job` stopped because `parent` did not succeed (cause parent_failed, naming it) and cancel its Slurm
    job, which never had an allocation. True when this call recorded the stop."""
    stage = ((parent.config or {}).get("pipeline") or {}).get("stage")
    what = f"job {parent.id}" + (f" (stage {stage})" if stage else "")
    reason = (f"parent {what} ended {parent.state}; never started. `hpcft resume {parent.id}` (or retry) re-queues "
              "this job behind it")
    moved = ledger.transition(job.id, State.stopped, reason, source="hpcft-chain", cause=PARENT_FAILED)
    if moved:
        ledger.add_event(job.id, "parent_failed", f"{what} ended {parent.state}", parent=parent.id,
                         parent_state=parent.state, stage=stage, slurm_job_id=job.slurm_job_id)
        if job.slurm_job_id:
            from hpcft.slurm import commands as C

            try:
                C.run(C.scancel_argv([job.slurm_job_id]))
            except HpcftError as e:  # already gone: nothing left to cancel
                print(f"[hpcft] job {job.id}: scancel {job.slurm_job_id}: {e}", flush=True)
    return moved


def settle_dependants(ledger, jobs: Sequence[Any]) -> int:
    """`hpcft sync`: every live job among `jobs` waiting for a parent that ended in error, stopped or expired is
    recorded stopped (cause parent_failed) and its Slurm job cancelled (Slurm shows it pending with reason
    DependencyNeverSatisfied); its own dependants follow in the same call. Returns how many were stopped."""
    waiting = [j for j in jobs if parents_of(j) and State(j.state) in LIVE]
    changed = 0
    while waiting:
        stopped = []
        for job in waiting:
            rows = [ledger.get(p) for p in parents_of(job)]
            failed = next((p for p in rows if is_terminal(p.state) and p.state != State.success.value), None)
            if failed is not None and stop_for_parent(ledger, job, failed):
                stopped.append(job)
        changed += len(stopped)
        if not stopped:
            break
        waiting = [ledger.get(j.id) for j in waiting if j not in stopped]
        waiting = [j for j in waiting if State(j.state) in LIVE]
    return changed


def dependants(ledger, job_id: int, jobs: Optional[Sequence[Any]] = None) -> List[Any]:
    """The jobs whose `after` names `job_id` (among `jobs`, else the acting user's visible jobs), oldest first."""
    rows = jobs if jobs is not None else ledger.search(sort=["created"])
    return sorted((j for j in rows if int(job_id) in parents_of(j)), key=lambda j: j.id)
