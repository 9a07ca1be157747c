"""Everything a job config must pass before anything is created: the common rules (`hpcft.config.checks`), the
data files, trackers, notifications and publishing settings, then the method's own rules and a scan of the data;
and what the submit needs on this machine (`check_prerequisites`: the ACL tools, a writable runs root, an output_dir
that is no other job's). Light (no torch), so it runs at submit before the ledger row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from omegaconf import DictConfig

from hpcft.config import schema
from hpcft.config.checks import check_deepspeed, check_job, check_model, check_resources, check_training
from hpcft.config.compose import compose, resolve_auto
from hpcft.config.methods import check, check_method
from hpcft.errors import ConfigError


def check_data(cfg: DictConfig) -> None:
    d = cfg.data
    check(d.format in schema.DATA_FORMATS, "data.format", d.format, "unknown format",
          "use data.format=" + "|".join(schema.DATA_FORMATS))
    from hpcft.train.datacheck import check_sources

    check_sources(cfg)  # every split readable (file, save_to_disk dir, cached hub id); columns, template known


def scan_data(cfg: DictConfig) -> None:
    """After the method's checks: the first records of every split parse, in a format the method trains on, with
    that format's fields (hpcft.train.datacheck: one located line per problem)."""
    from hpcft.train.datacheck import scan

    scan(cfg)


def check_trackers(cfg: DictConfig) -> None:
    """training.report_to: known trackers, each installed (hpcft.train.trackers; no tracker is imported here)."""
    if cfg.training.get("report_to"):
        from hpcft.train.trackers import check_report_to

        check_report_to(cfg.training.report_to)


def check_notify(cfg: DictConfig) -> None:
    from hpcft.ledger import notify

    notify.check(cfg)  # notify.on among success|error|expired, URLs apprise can parse


def check_publish(cfg: DictConfig) -> None:
    from hpcft.registry import names as registry

    registry.check_publish(cfg)  # publish.name a registry name, publish.visibility project|all


COMMON_RULES = (check_job, check_model, check_training, check_trackers, check_data, check_deepspeed, check_resources,
                check_notify, check_publish)


def validate(cfg: DictConfig) -> DictConfig:
    """The common rules, then the method's (its data format and its rule function). Raises ConfigError with one
    line naming the key and the fix; light (no torch), so it runs at submit before anything is created."""
    for rule in COMMON_RULES:
        rule(cfg)
    resolve_auto(cfg)
    check_method(cfg)
    scan_data(cfg)
    return cfg


def load(overrides: Iterable[str] = ()) -> DictConfig:
    """compose + validate (with the user's notification defaults, hpcft.ledger.notify.apply_defaults)."""
    from hpcft.ledger import notify

    overrides = list(overrides)
    return validate(notify.apply_defaults(compose(overrides), overrides))



# ------------------------------------------------------------------------------------------------ prerequisites
# What a submit needs on this machine, checked before the ledger row: a failure after the row would leave a job
# `queued` forever with no Slurm id. Each is one line with the fix (ConfigError: exit 2, nothing created).

def check_acl_tools(access: str) -> None:
    """access=ro|rw shares the run directory at submit with POSIX ACLs: setfacl and getfacl must be on PATH."""
    import shutil

    from hpcft.rundir.files import ACL_PACKAGE_HINT

    if access in ("ro", "rw"):
        for tool in ("setfacl", "getfacl"):
            if not shutil.which(tool):
                raise ConfigError(f"access={access}: {tool} not found on PATH, so the run directory cannot be "
                                  f"shared; {ACL_PACKAGE_HINT}, or submit with access=none and `hpcft share` later")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(target: Path, what: str, fix: str) -> None:
    """`target` (a directory to create or write in) can be made and written by this user."""
    import os

    found = _nearest_existing(target)
    if not found.is_dir():
        raise ConfigError(f"{what}: {found} is not a directory, so {target} cannot be created; {fix}")
    if not os.access(found, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {found} is not writable by this user, so {target} cannot be created there; {fix}")


def check_output_dir(out: Path) -> None:
    """An explicit output_dir holding another job's identity (its job.json) is never reused."""
    from hpcft.rundir.identity import read_identity

    found = read_identity(out)
    if found is not None:
        raise ConfigError(f"output_dir={out}: already the run directory of job {found.get('job_id')} "
                          f"({found.get('uuid')}, owner {found.get('owner')}, ledger {found.get('ledger')}); a run "
                          "directory is never reused by another job: choose another output_dir, or leave it out")


def check_prerequisites(cfgs: Sequence[DictConfig]) -> None:
    """Everything a submit of `cfgs` needs, before the first ledger row: the ACL tools for access=ro|rw, a writable
    runs root (or output_dir's parent), and no explicit output_dir that is another job's run directory."""
    from hpcft import paths

    for cfg in cfgs:
        check_acl_tools(str(cfg.get("access") or "none"))
        if cfg.get("output_dir"):
            out = Path(str(cfg.output_dir)).expanduser().resolve()
            check_output_dir(out)
            check_writable(out, f"output_dir={out}", "choose an output_dir in a directory you can write")
        else:
            root = paths.runs_root().expanduser().resolve()
            check_writable(root, f"runs root {root}", "set HPCFT_RUNS (or HPCFT_HOME) to a directory you can write")
