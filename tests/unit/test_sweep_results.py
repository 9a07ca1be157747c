"""A Hydra app's sweep (`hydra/launcher=hpcft`) compared by the numbers its task returned: what counts as a returned
number, and `hpcft sweep ID --by KEY --max/--min` ranking the points by one of them. (The whole path, a real app on the
real Slurm cluster: tests/cluster/test_hydra_results.py.)"""

import json
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli
from hpcft.rundir.returned import load_scalars, save_scalars, scalars


def test_a_number_or_a_mapping_of_numbers_is_recorded():
    import numpy as np
    import torch
    from omegaconf import OmegaConf

    assert scalars(3) == {"value": 3.0} and scalars(np.float32(0.5)) == {"value": 0.5}
    assert scalars(torch.tensor(1.5)) == {"value": 1.5}
    for nothing in (None, "0.5", True, [1.0, 2.0], np.array([1.0, 2.0]), object()):
        assert scalars(nothing) == {}, nothing
    got = scalars({"loss": 0.25, "name": "a", "ok": True, "val": {"acc": 0.9, "n": {"deep": 2}}, "xs": [1, 2],
                   "diverged": float("nan"), "t": torch.tensor(2.0)})
    assert got == {"loss": 0.25, "val.acc": 0.9, "val.n.deep": 2.0, "diverged": None, "t": 2.0}
    assert scalars(OmegaConf.create({"a": 1, "b": {"c": 2.5}})) == {"a": 1.0, "b.c": 2.5}


def test_saved_and_read_back(tmp_path):
    assert save_scalars(tmp_path, "not a number") == {} and not list(tmp_path.iterdir())  # nothing written
    assert save_scalars(tmp_path, {"loss": 0.5, "bad": float("inf")}) == {"loss": 0.5, "bad": None}
    assert load_scalars(tmp_path) == {"loss": 0.5, "bad": None}
    assert load_scalars(tmp_path / "missing") == {} and load_scalars(None) == {}
    (tmp_path / ".hpcft-results.json").write_text("{not json")
    assert load_scalars(tmp_path) == {}


def _hydra_sweep(ledger, root, returns):
    """Points as hydra_launch creates them (method hydra, a `sweep` event each) whose task returned `returns[k]`
    (None: not finished yet)."""
    from hpcft.jobs.hydra_point import save_return
    from hpcft.ledger.sweeps import record_point

    jobs = []
    for k, value in enumerate(returns):
        job = ledger.create_job(name=f"myapp x={k + 1}", method="hydra", executor="slurm", state="queued")
        out = root / f"p{job.id}"
        out.mkdir(parents=True)
        job = ledger.update(job.id, output_dir=str(out), state="success" if value is not None else "queued")
        record_point(ledger, job.id, jobs[0].id if jobs else job.id, k, len(returns),
                     {"base": "myapp", "values": {"x": str(k + 1)}, "label": f"x={k + 1}"})
        if value is not None:
            save_return(out, value)
        jobs.append(job)
    return jobs


def sweep_cli(*args):
    return subprocess.run(hpcft_cli() + ["sweep", *args], capture_output=True, text=True)


def test_hpcft_sweep_shows_the_returned_values_best_first(hpcft_home, tmp_path):
    from hpcft.ledger.store import Ledger
    from hpcft.ledger.sweeps import compare

    ledger = Ledger()
    a, b, c, d = _hydra_sweep(ledger, tmp_path, [{"loss": 0.5, "accuracy": 0.7}, {"loss": 0.2, "accuracy": 0.6},
                                       {"loss": 0.9, "accuracy": 0.9}, None])
    r = sweep_cli(str(b.id))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sweep {a.id}: myapp, 4 points, best first by loss (lowest)"  # the first returned key
    assert lines[1].split() == ["JOB", "x", "STATE", "loss", "accuracy"]
    assert [ln.split() for ln in lines[2:6]] == [[str(b.id), "2", "success", "0.2", "0.6"],
                                                 [str(a.id), "1", "success", "0.5", "0.7"],
                                                 [str(c.id), "3", "success", "0.9", "0.9"],
                                                 [str(d.id), "4", "queued", "-", "-"]]
    assert lines[6] == f"best: job {b.id} myapp x=2 (loss 0.2, state success)"
    by_acc = sweep_cli(str(a.id), "--by", "accuracy").stdout.splitlines()  # an accuracy: highest first
    assert by_acc[0].endswith("best first by accuracy (highest)") and by_acc[1].split()[3] == "accuracy"
    assert [ln.split()[0] for ln in by_acc[2:6]] == [str(c.id), str(a.id), str(b.id), str(d.id)]
    worst = compare(ledger, a.id, by="loss", higher=True)  # --max
    assert [row["id"] for row in worst["rows"]] == [c.id, a.id, b.id, d.id] and worst["higher_is_better"]
    assert worst["rows"][0]["results"] == {"loss": 0.9, "accuracy": 0.9}
    js = json.loads(sweep_cli(str(a.id), "--json", "--min", "--by", "accuracy").stdout)
    assert js["returned"] == ["loss", "accuracy"] and [row["id"] for row in js["rows"]][:3] == [b.id, a.id, c.id]
    bad = sweep_cli(str(a.id), "--by", "f1")
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "error: --by f1: no point of this sweep returned 'f1'; it returned: loss, accuracy")


def test_a_bare_returned_number_is_named_value(hpcft_home, tmp_path):
    from hpcft.ledger.store import Ledger

    a, b = _hydra_sweep(Ledger(), tmp_path, [30, 10])
    lines = sweep_cli(str(a.id)).stdout.splitlines()
    assert lines[0].endswith("best first by value (lowest)") and lines[1].split()[-1] == "value"
    assert [ln.split()[0] for ln in lines[2:4]] == [str(b.id), str(a.id)]
    assert [ln.split()[0] for ln in sweep_cli(str(a.id), "--max").stdout.splitlines()[2:4]] == [str(a.id), str(b.id)]


@pytest.mark.parametrize("key,higher", [("loss", False), ("val.acc", True), ("f1_macro", True), ("pass@1", True),
                                        ("error_rate", False), ("value", False), ("mean_reward", True),
                                        ("reward_loss", False), ("eval.ppl", False)])
def test_default_direction_by_name(key, higher):
    from hpcft.ledger.sweeps import higher_is_better

    assert higher_is_better(key) is higher


def test_own_sweeps_take_by_too(hpcft_home):
    from hpcft.errors import ConfigError
    from hpcft.jobs.submit import create_jobs, plan
    from hpcft.ledger.store import Ledger
    from hpcft.ledger.sweeps import compare

    ledger = Ledger()
    a, b = create_jobs(ledger, plan(["executor=local", "training.seed=1,2"], multirun=True))
    for job, train, val in ((a, 1.0, 3.0), (b, 2.0, 2.0)):
        (Path(job.output_dir) / "metrics.jsonl").write_text(
            json.dumps({"type": "train", "step": 1, "loss": train}) + "\n"
            + json.dumps({"type": "eval", "split": "validation", "step": 1, "loss": val}) + "\n")
    assert [r["id"] for r in compare(ledger, a.id)["rows"]] == [b.id, a.id]  # validation loss by default
    assert [r["id"] for r in compare(ledger, a.id, by="train_loss")["rows"]] == [a.id, b.id]
    with pytest.raises(ConfigError, match="rank them by one of: val, train_loss"):
        compare(ledger, a.id, by="accuracy")
