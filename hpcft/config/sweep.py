"""Expand Hydra multirun overrides (`a=1,2 b=x,y`, `range()`, `choice()`) into one override list per point, and name
the points by the values they sweep."""

from __future__ import annotations

import itertools
import math
import re
from typing import Dict, List, Sequence

from hpcft.errors import ConfigError


MAX_POINTS = 1000  # Slurm's default MaxArraySize is 1001 (indices 0-1000)


def expand(overrides: Sequence[str]) -> List[List[str]]:
    """The cartesian product of all sweeps, in Hydra's order; a list without sweeps gives one point."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"bad override: {str(e).splitlines()[0]}") from None
    axes: List[List[str]] = []
    size = 1
    for ov in parsed:
        key = ov.get_key_element()
        if ov.is_sweep_override():
            axes.append([f"{key}={v}" for v in itertools.islice(ov.sweep_string_iterator(), MAX_POINTS + 1)])
            size *= len(axes[-1])
            if size > MAX_POINTS:
                raise ConfigError(f"this sweep has more than {MAX_POINTS} points; split it into smaller sweeps")
        else:
            axes.append([f"{key}={ov.get_value_element_as_str()}"])
    return [list(point) for point in itertools.product(*axes)] if axes else [[]]


def is_sweep(overrides: Sequence[str]) -> bool:
    return len(expand(overrides)) > 1


# ---------------------------------------------------------------------------------------------- naming the points
# A sweep's points are named by what they sweep: `quickstart-tiny-lora lr=2e-3 rank=8` (hpcft.jobs.submit.plan).

SHORT_KEYS = {  # well-known options get short names; any other key is named by its last path segment
    "training.learning_rate": "lr", "training.batch_size": "bs", "training.epochs": "epochs",
    "training.max_steps": "steps", "training.sequence_length": "seq", "training.gradient_accumulation": "accum",
    "training.weight_decay": "wd", "training.warmup_ratio": "warmup", "training.lr_decay_ratio": "decay",
    "training.max_grad_norm": "clip", "training.seed": "seed", "training.precision": "precision",
    "method.lora.rank": "rank", "method.lora.alpha": "alpha", "method.lora.dropout": "dropout",
    "method.lora.target_modules": "targets", "method.beta": "beta", "method.num_generations": "gens",
    "resources.nodes": "nodes", "resources.gpus_per_node": "gpus", "deepspeed": "ds", "deepspeed.stage": "zero",
}
_UNLABELLED = ("name", "description")  # a sweep over the name itself is named already
_VALUE_DROP = re.compile(r"[\[\]()'\"{} ]")
_VALUE_BAD = re.compile(r"[^\w.+@:,-]")  # what a job name may hold (hpcft.config.compose), less `=` and spaces


def short_value(text: str) -> str:
    """A point's value as it reads best in a name, with one spelling per value whatever way it was typed: whole
    numbers as integers (`1.0`, `1e3` -> 1, 1000), every other number below 1 or from 1e5 up in scientific notation
    with the shortest exact mantissa (0.001, 1e-3, 1.0E-3 -> 1e-3; 0.01 -> 1e-2; 0.1 -> 1e-1; 2.5e-05 -> 2.5e-5),
    the rest in the shortest exact decimals (1.5); a path -> its file name, a list -> a,b."""
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return str(int(t))
    try:
        f = float(t)
    except ValueError:
        t = _VALUE_DROP.sub("", t)
        t = t.rstrip("/").rsplit("/", 1)[-1] if "/" in t else t
        return _VALUE_BAD.sub("_", t) or "_"
    if not math.isfinite(f):
        return t.lower()
    if f == int(f) and abs(f) < 1e16:
        return str(int(f))
    if abs(f) < 1 or abs(f) >= 1e5:
        return _scientific(f)
    return repr(f)  # the shortest exact spelling; between 1 and 1e5 it is never scientific


def _scientific(f: float) -> str:
    """`2.5e-5`: the shortest mantissa that reads back as exactly f, no `+`, no leading zeros in the exponent."""
    for digits in range(17):
        mantissa, exp = f"{f:.{digits}e}".split("e")
        if float(f"{mantissa}e{exp}") == f:
            break
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def swept_values(points: Sequence[Sequence[str]]) -> List[Dict[str, str]]:
    """For each point of `expand`, {short key: short value} of the keys whose values differ between points, in the
    order they were given (`training.learning_rate=1e-3,2e-3` -> [{"lr": "1e-3"}, {"lr": "2e-3"}])."""
    parsed = [[(ov.partition("=")[0].lstrip("+~"), ov.partition("=")[2]) for ov in p] for p in points]
    keys: List[str] = []
    for point in parsed:
        for k, _ in point:
            if k not in keys:
                keys.append(k)
    varying = [k for k in keys if len({dict(p).get(k) for p in parsed}) > 1 and k not in _UNLABELLED]
    shorts = {k: SHORT_KEYS.get(k, k.rsplit(".", 1)[-1]) for k in varying}
    clash = {s for s in shorts.values() if list(shorts.values()).count(s) > 1}
    shorts = {k: (k if s in clash else s) for k, s in shorts.items()}
    return [{shorts[k]: short_value(dict(p)[k]) for k in varying if k in dict(p)} for p in parsed]


def label(values: Dict[str, str]) -> str:
    """`lr=2e-3 rank=8` for {"lr": "2e-3", "rank": "8"}."""
    return " ".join(f"{k}={v}" for k, v in values.items())


def point_name(base: str, values: Dict[str, str], limit: int = 128) -> str:
    """`<base> <label>` within `limit` characters: the base is shortened first, the label kept whole if it fits."""
    lab = label(values)
    if not lab:
        return base
    if len(lab) + 1 >= limit:
        return lab[:limit]
    return f"{base[:limit - len(lab) - 1].rstrip()} {lab}"
