"""Expand Hydra multirun overrides (`a=1,2 b=x,y`, `range()`, `choice()`) into one override list per point."""

from __future__ import annotations

import itertools
from typing import List, Sequence

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
