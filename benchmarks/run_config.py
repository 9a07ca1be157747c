"""What the benchmarks share: a run directory with the config.yaml of a job, as `hpcft submit` writes it.

Imported by the benchmark scripts (`python benchmarks/bench_*.py` puts this folder on sys.path).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_config(out: Path, overrides: list) -> Path:
    """`out/config.yaml` of the job that `overrides` compose (validated as at submit), with output_dir=out."""
    from omegaconf import OmegaConf, open_dict

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import hpcft.jobs.preflight

    cfg = hpcft.jobs.preflight.load(overrides)
    with open_dict(cfg):
        cfg.output_dir = str(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return out / "config.yaml"
