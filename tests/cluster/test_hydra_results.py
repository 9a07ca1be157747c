"""A user's own Hydra app (tests/hydra_app/results_app.py) swept with `hydra/launcher=hpcft` on the real local Slurm
cluster: the numbers each point's task returned are recorded in its run directory, and `hpcft sweep ID` shows them
side by side, best first by the first returned key or by `--by KEY` (`--max/--min`)."""

import json
import subprocess
import sys

import pytest

from support import ROOT, hpcft_cli
from test_hydra_launcher import jobs, wait_ended

APP = ROOT / "tests" / "hydra_app" / "results_app.py"


def hpcft(*args):
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slurm
@pytest.mark.slow
def test_hydra_app_sweep_shows_the_returned_values(slurm_cluster, hpcft_home, tmp_path):
    r = subprocess.run([sys.executable, str(APP), "-m", "x=1,2,3", "hydra/launcher=hpcft",
                        "hydra/launcher/resources=cpu_small", f"hydra.sweep.dir={tmp_path / 'multirun'}",
                        "hydra.launcher.name=results", "hydra.launcher.resources.time=00:05:00"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ended = wait_ended(list(jobs()))
    by_x = {int(j["name"].split("x=")[1]): i for i, j in ended.items()}
    assert sorted(by_x) == [1, 2, 3] and {j["state"] for j in ended.values()} == {"success"}, ended

    first = hpcft("sweep", str(by_x[3]))
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"sweep {by_x[1]}: results, 3 points, best first by loss (lowest)", first.stdout
    assert lines[1].split() == ["JOB", "x", "STATE", "loss", "accuracy", "eval.f1"]  # "note" is no number
    assert [ln.split() for ln in lines[2:5]] == [[str(by_x[2]), "2", "success", "0.5", "0.2", "0.8"],
                                                 [str(by_x[1]), "1", "success", "1.5", "0.1", "0.9"],
                                                 [str(by_x[3]), "3", "success", "1.5", "0.3", "0.7"]]
    assert lines[5] == f"best: job {by_x[2]} results x=2 (loss 0.5, state success)"

    acc = hpcft("sweep", str(by_x[1]), "--by", "accuracy").stdout.splitlines()  # an accuracy: highest first
    assert acc[0].endswith("best first by accuracy (highest)") and acc[1].split()[3] == "accuracy"
    assert [ln.split()[0] for ln in acc[2:5]] == [str(by_x[x]) for x in (3, 2, 1)]
    f1 = json.loads(hpcft("sweep", str(by_x[1]), "--by", "eval.f1", "--min", "--json").stdout)
    assert [row["id"] for row in f1["rows"]] == [by_x[x] for x in (3, 2, 1)] and not f1["higher_is_better"]
    assert f1["rows"][0]["results"] == {"loss": 1.5, "accuracy": 0.3, "eval.f1": 0.7}
    logs = hpcft("logs", str(by_x[2])).stdout
    assert "[hpcft] returned: loss=0.5, accuracy=0.2, eval.f1=0.8" in logs, logs
