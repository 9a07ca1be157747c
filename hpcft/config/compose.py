"""Compose a job config from `conf/` plus overrides (Hydra's compose API, one line per error); read and write it as
YAML; resolve `auto` values. Validation is `hpcft.jobs.preflight`."""

from __future__ import annotations

import os
from typing import Iterable, List

from omegaconf import DictConfig, OmegaConf

from hpcft import paths
from hpcft.config import schema
from hpcft.errors import ConfigError

_RESOLVERS_DONE = False


def register_resolvers() -> None:
    global _RESOLVERS_DONE
    if not _RESOLVERS_DONE:
        OmegaConf.register_new_resolver("hpcft_asset", paths.asset, replace=True)
        _RESOLVERS_DONE = True


def group_options(group: str) -> List[str]:
    d = paths.conf_dir() / group
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def compose(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """The resolved job config for `overrides` (Hydra syntax). Raises ConfigError with one line on any problem."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    register_resolvers()
    schema.register()
    overrides = list(overrides)
    for ov in overrides:
        refuse_interpolation(ov)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base=None, config_dir=str(paths.conf_dir()), job_name="hpcft"):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except MissingConfigException as e:
        raise ConfigError(_missing_option_message(e, overrides)) from None
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_first_line(e)) from None
    finally:
        GlobalHydra.instance().clear()
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(_first_line(e)) from None
    return cfg


def refuse_interpolation(override: str) -> None:
    """Values given on the command line are stored literally: a `${...}` interpolation (`${oc.env:SECRET}` would
    store an environment variable in the ledger) is refused with one line naming the key. The configs hpcft ships
    under conf/ keep theirs (`${model.name}`, `${hpcft_asset:...}`)."""
    key, sep, value = override.partition("=")
    if sep and "${" in value:
        key = key.lstrip("+~")
        raise ConfigError(f"{key}: ${{...}} interpolation is not allowed in a value given on the command line "
                          f"({value[:60]!r}); write the value literally")


def _first_line(e: BaseException) -> str:
    """One line for a Hydra/OmegaConf error: the deepest cause, with the key it concerns."""
    while e.__cause__ is not None:
        e = e.__cause__
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    msg = lines[0] if lines else type(e).__name__
    key = next((x.split(":", 1)[1].strip() for x in lines[1:] if x.startswith("full_key:")), None)
    if "Could not override" in msg or "not in struct" in msg or "Key '" in msg and "not" in msg:
        msg += " (no such key: check the spelling, see all keys with `hpcft submit --dry-run`)"
    if "is not a ListConfig" in msg and key:  # key=value where a list is expected
        msg = f"{key}: expected a list; write {key}=[a,b] (brackets, comma-separated; [] = empty)"
    return f"{key}: {msg}" if key and key not in msg else msg


def _missing_option_message(e: Exception, overrides: List[str]) -> str:
    text = str(e)
    for group in ("model", "method", "resources", "data", "deepspeed", "experiment"):
        if f"'{group}/" in text or f"{group}/" in text.split("\n")[0]:
            chosen = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == group), "?")
            opts = ", ".join(group_options(group))
            return f"{group}={chosen}: unknown option; choose one of: {opts}"
    return _first_line(e)


def auto_precision(gpus_per_node: int) -> str:
    """What training.precision=auto means: bf16 on a job that asks for GPUs, fp32 on CPU."""
    return "bf16" if int(gpus_per_node or 0) > 0 else "fp32"


def resolve_auto(cfg: DictConfig) -> DictConfig:
    """training.precision=auto -> its value for the job's resources, stored in the job's config, so that every
    reader (the trainers, the DeepSpeed config, the memory estimate) sees one resolved value. Idempotent."""
    t = cfg.get("training")
    if t is not None and t.get("precision") == "auto":
        t.precision = auto_precision(cfg.resources.get("gpus_per_node", 0))
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def from_yaml_file(path: os.PathLike) -> DictConfig:
    register_resolvers()
    return OmegaConf.load(path)  # type: ignore[return-value]
