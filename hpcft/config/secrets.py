"""Secrets stay with their owner: the keys the schema marks secret (`metadata=SECRET` in hpcft.config.schema, e.g.
`notify.urls`, whose apprise URLs may carry passwords and tokens) are masked wherever a job's config leaves its
owner's hands: experiment trackers (hpcft.train.trackers: MLflow params and artifact, TensorBoard, W&B), model cards
(hpcft.registry.card), other users' `hpcft show --config`. `masked` is the one place that masks; everything uses it.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from functools import lru_cache
from typing import Any, Dict, FrozenSet

MASK = "***"


def _walk(cls: type, prefix: str, out: set) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("secret"):
            out.add(prefix + f.name)
        hint = hints.get(f.name)
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            for sub in [hint, *_subclasses(hint)]:  # method: MethodConfig, or a method's own dataclass
                _walk(sub, f"{prefix}{f.name}.", out)


def _subclasses(cls: type) -> list:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_subclasses(sub)]
    return out


@lru_cache(maxsize=1)
def secret_keys() -> FrozenSet[str]:
    """Dotted paths of every key the job schema marks secret (`notify.urls`, ...)."""
    from hpcft.config import schema

    out: set = set()
    _walk(schema.JobConfig, "", out)
    return frozenset(out)


def _mask_value(value: Any) -> Any:
    if value in (None, "", [], {}):
        return value  # nothing there: nothing to hide, and "no receivers" stays readable
    if isinstance(value, (list, tuple)):
        return [MASK for _ in value]
    return MASK


def masked(config: Any) -> Dict[str, Any]:
    """A copy of a job config (an OmegaConf config, resolved, or a plain dict such as a ledger row's `config`) with
    every secret value replaced by "***" (a list item by item: `notify.urls: ['***', '***']`). The original is
    left as it is."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        data: Dict[str, Any] = OmegaConf.to_container(config, resolve=True)  # type: ignore[assignment]
    else:
        data = copy.deepcopy(dict(config or {}))
    for key in secret_keys():
        *parents, last = key.split(".")
        node: Any = data
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = _mask_value(node[last])
    return data


def clear_secrets(cfg: Any) -> Any:
    """Empty every secret key of a job config in place (a list becomes [], anything else None): a clone by someone
    other than the job's owner must not carry, nor send to, the owner's receivers. Returns `cfg`."""
    from omegaconf import OmegaConf

    for key in secret_keys():
        value = OmegaConf.select(cfg, key)
        if value not in (None, "", []):
            OmegaConf.update(cfg, key, [] if OmegaConf.is_list(value) or isinstance(value, list) else None)
    return cfg
