"""A user's own Hydra app whose task returns its figures (tests/cluster/test_hydra_results.py; README "Your own Hydra
app"): `hpcft sweep ID` then compares the points by them.

    python tests/hydra_app/results_app.py -m x=1,2,3 hydra/launcher=hpcft
    hpcft sweep ID --by accuracy
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg: DictConfig) -> dict:
    loss = (cfg.x - 2) ** 2 + 0.5  # best at x=2
    print(f"x={cfg.x} -> loss {loss}", flush=True)
    return {"loss": loss, "accuracy": cfg.x / 10, "eval": {"f1": 1 - cfg.x / 10}, "note": f"x is {cfg.x}"}


if __name__ == "__main__":
    main()
