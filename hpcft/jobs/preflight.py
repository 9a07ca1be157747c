"""Everything a job config must pass before anything is created: the common rules (`hpcft.config.checks`), the
data files, trackers, notifications and publishing settings, then the method's own rules and a scan of the data.
Light (no torch), so it runs at submit before the ledger row.
"""

from __future__ import annotations

from typing import Iterable

from omegaconf import DictConfig

from hpcft.config import schema
from hpcft.config.checks import check_deepspeed, check_job, check_model, check_resources, check_training
from hpcft.config.compose import compose, resolve_auto
from hpcft.config.methods import check, check_method


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


