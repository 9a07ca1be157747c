"""A user's own Hydra app, swept through hpcft (tests/cluster/test_hydra_launcher.py; README "Your own Hydra app"):

    python tests/hydra_app/app.py -m x=1,2,3 hydra/launcher=hpcft
"""

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> int:
    time.sleep(cfg.sleep_s)
    if cfg.fail:
        raise ValueError(f"asked to fail at x={cfg.x}")
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "result.txt").write_text(f"{cfg.x * 10}\n")
    print(f"x={cfg.x} -> {cfg.x * 10}", flush=True)
    return cfg.x * 10


if __name__ == "__main__":
    main()
