"""`hpcft clone JOB [OVERRIDES]`: a new job from a job's recorded config (its ledger row's `config`) with changes,
validated and submitted the way `hpcft submit` does it (hpcft.jobs.preflight.validate, hpcft.jobs.submit's Plan and
create_jobs, then the executor).

The recorded config is already composed and resolved, so overrides are applied to it as values on its schema:
`key=value`, `+key=value`, `++key=value`, `~key` (Hydra syntax, types checked, unknown keys refused). Swapping a
config group (`method=dpo`, `+experiment=...`) needs a fresh composition and is refused: use `hpcft submit`.
The clone gets its own run directory (output_dir reset) and starts fresh (training.resume_from reset to its
default) unless an override says otherwise. It is recorded as cloned from its source: `parent_id` is the source
(or, when the config starts from a job's model, model.parent_job, the lineage) and a `cloned` event on both jobs
names the other.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from hpcft.config import compose
from hpcft.jobs import preflight
from hpcft import paths
from hpcft.config import methods, schema
from hpcft.jobs import submit as hsubmit
from hpcft.errors import ConfigError, HpcftError, SchedulerError
from hpcft.states import SUBMIT_FAILED, State


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def on_schema(job_id: int, recorded: Dict[str, Any]) -> DictConfig:
    """A job's recorded config on the schema its composition had (the method's own dataclass included), so that
    overrides are type-checked and unknown keys refused as at submit."""
    base = OmegaConf.structured(schema.JobConfig)
    spec = methods.METHOD_SPECS.get((recorded.get("method") or {}).get("name"))
    if spec is not None:
        base.method = OmegaConf.structured(spec.schema)
    try:
        return OmegaConf.merge(base, recorded)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"job {job_id}: its recorded config does not fit this hpcft's schema "
                          f"({_first_line(e)}); compose a new job with `hpcft submit`") from None


def apply_overrides(cfg: DictConfig, overrides: Sequence[str], job_id: int) -> None:
    """Hydra-syntax overrides applied in place to a recorded config; ConfigError (one line) on the first bad one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    groups = {p.name for p in paths.conf_dir().iterdir() if p.is_dir()}
    for text in overrides:
        compose.refuse_interpolation(text)  # stored literally, as with `submit`
        try:
            o = parser.parse_override(text)
        except Exception as e:  # hydra's OverrideParseException
            raise ConfigError(f"{text}: {_first_line(e)}") from None
        line, key = o.input_line, o.key_or_group
        if o.is_sweep_override():
            raise ConfigError(f"{line}: a clone is one job; sweep with `hpcft submit -m`")
        if o.package is not None or key in groups:
            raise ConfigError(f"{line}: a config group cannot be swapped in job {job_id}'s recorded config; "
                              f"compose a new job with `hpcft submit {line} ...` instead")
        try:
            if o.is_delete():
                parent_key, _, leaf = key.rpartition(".")
                parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
                if not isinstance(parent, DictConfig) or leaf not in parent:
                    raise ConfigKeyError(key)
                with open_dict(cfg):
                    del parent[leaf]
            elif o.is_add() and OmegaConf.select(cfg, key, throw_on_missing=False) is not None:
                raise ConfigError(f"{line}: {key} is already set; override it with {line[1:]}")
            else:
                OmegaConf.update(cfg, key, o.value(), merge=True, force_add=o.is_add() or o.is_force_add())
        except (ConfigAttributeError, ConfigKeyError):
            raise ConfigError(f"{line}: no such key in job {job_id}'s config (check the spelling; see all keys "
                              f"with `hpcft show {job_id} --config`)") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"{line}: {_first_line(e)}") from None


def plan(job, overrides: Sequence[str], by: Optional[str] = None) -> hsubmit.Plan:
    """The validated plan of one new job: `job`'s recorded config, reset to a fresh run, with `overrides`. A clone
    `by` someone other than the job's owner starts without the owner's secrets (notify.urls, ...:
    hpcft.config.secrets)."""
    from hpcft.jobs.executors import resolve_name

    from hpcft.jobs.hydra_point import HYDRA_METHOD

    overrides = list(overrides)
    if job.method == HYDRA_METHOD:  # the recorded config is the app's, not a job config
        raise ConfigError(f"job {job.id} is a point of a Hydra app's sweep; run the app again with the overrides "
                          "you want (python app.py -m ... hydra/launcher=hpcft)")
    from hpcft.rundir.secrets_file import restore, still_masked

    # the owner's clone takes the owner's secrets back (the stored config holds them masked); anyone else's has none
    recorded = restore(job.config, job.output_dir) if by in (None, job.owner) else job.config
    cfg = on_schema(job.id, recorded)
    keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides]
    cfg.output_dir = None  # its own run directory: <runs>/<new id>-<name>
    cfg.training.resume_from = schema.TrainingConfig.resume_from  # a fresh start (nothing to resume there)
    if cfg.get("pipeline"):
        cfg.pipeline = {}  # a job of its own, not a stage of the source's pipeline (`hpcft pipeline show`)
    if (by is not None and by != job.owner) or still_masked(recorded):
        from hpcft.config.secrets import clear_secrets

        clear_secrets(cfg)
    if "model.path" in keys:
        cfg.model.parent_job = None  # another model: the old lineage no longer holds (job:ID sets a new one)
        cfg.model.asset = None  # (likewise asset:NAME)
    apply_overrides(cfg, overrides, job.id)
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    cfg = hsubmit.resolve_lineage(preflight.validate(cfg))
    return hsubmit.Plan([cfg], [overrides], resolve_name(cfg.executor))


def changes(before: Dict[str, Any], after: DictConfig) -> List[str]:
    """`key: old -> new` for every leaf that differs between a recorded config and a planned one."""

    def flat(d: Any, prefix: str = "") -> Dict[str, Any]:
        if isinstance(d, dict) and d:
            out: Dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: d}

    a, b = flat(before), flat(OmegaConf.to_container(after, resolve=True))
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in sorted(set(a) | set(b))
            if a.get(k, ...) != b.get(k, ...)]


def submit(ledger, source, p: hsubmit.Plan):
    """Create the clone (hpcft.jobs.submit.create_jobs), record where it came from, hand it to the executor. A failed
    hand-over marks the clone `error` with why, as `hpcft submit` does."""
    from hpcft.jobs.executors import get_executor
    from hpcft.jobs.control import refuse_foreign_remote_code

    if not any(o.lstrip("+~").startswith("model.trust_remote_code=") for o in p.overrides[0]):
        refuse_foreign_remote_code(ledger, source, "clone")  # enabling it yourself (the override) is yours to do
    (job,) = hsubmit.create_jobs(ledger, p)
    cfg, overrides = p.configs[0], p.overrides[0]
    job = ledger.update(job.id, parent_id=cfg.model.get("parent_job") or source.id)
    what = f" with {' '.join(overrides)}" if overrides else ""
    ledger.add_event(job.id, "cloned", f"cloned from job {source.id}{what}", source=source.id, overrides=overrides)
    ledger.add_event(source.id, "cloned", f"cloned as job {job.id}{what}", clone=job.id, overrides=overrides)
    try:
        return get_executor(p.executor).submit(ledger, [job])[0]
    except Exception as e:
        why = _first_line(e)
        ledger.transition(job.id, State.error, f"submission failed: {why}", cause=SUBMIT_FAILED)
        if isinstance(e, HpcftError):
            raise
        raise SchedulerError(f"submission to {p.executor} failed: {why}") from e
