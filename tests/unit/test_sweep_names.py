"""Sweeps you can read: points named by their swept values, and `hpcft sweep` comparing them best first.
(The whole path on the real Slurm cluster: tests/cluster/test_slurm_e2e.py::test_multirun_sweep_is_one_array...)"""

import json
import subprocess

from support import hpcft_cli
from hpcft.config.sweep import expand, point_name, short_value, swept_values


def test_values_read_as_written():
    assert [short_value(x) for x in ("0.001", "0.0002", "2.5e-05", "0.1", "0.05", "1.0", "16", "100000.0", "1.5",
                                     "123456.7", "-0.02", "nan")] == [
        "1e-3", "2e-4", "2.5e-5", "1e-1", "5e-2", "1", "16", "100000", "1.5", "1.234567e5", "-2e-2", "nan"]
    assert short_value("/data/sets/b.jsonl") == "b.jsonl" and short_value("[q_proj,v_proj]") == "q_proj,v_proj"
    assert short_value("a$(b)`c") == "a_b_c"  # only what a job name may hold


def test_one_spelling_per_value():
    """However a value is typed, its name reads the same; and one sweep's values read alike (not 1e-3 beside 0.01)."""
    for spellings in (["0.001", "1e-3", "1.0E-3", "1e-03", "0.0010"], ["0.01", "1e-2", "1.0e-2"],
                      ["1000", "1e3", "1000.0", "+1000"], ["100000", "1e5", "1.0e+05"], ["3", "3.0", "03"]):
        assert len({short_value(s) for s in spellings}) == 1, spellings
    values = swept_values(expand(["training.learning_rate=1e-3,0.01,0.1,1e-4", "method.lora.dropout=0.0,0.05"]))
    assert [v["lr"] for v in values[::2]] == ["1e-3", "1e-2", "1e-1", "1e-4"]
    assert [v["dropout"] for v in values[:2]] == ["0", "5e-2"]
    assert short_value("0.1") != short_value("0.01")  # distinct values never share a spelling


def test_points_are_named_by_the_keys_that_vary():
    pts = expand(["training.learning_rate=1e-3,2e-3", "method.lora.rank=4,8", "training.epochs=2",
                  "data.train=/x/a.jsonl,/x/b.jsonl", "+experiment=quickstart"])
    values = swept_values(pts)
    assert len(values) == 8 and values[0] == {"lr": "1e-3", "rank": "4", "train": "a.jsonl"}
    assert values[-1] == {"lr": "2e-3", "rank": "8", "train": "b.jsonl"}
    # the same last segment twice: both keys in full
    clash = swept_values(expand(["method.lora.dropout=0,0.1", "model.arch.dropout=0,0.2"]))
    assert clash[1] == {"method.lora.dropout": "0", "model.arch.dropout": "2e-1"}
    assert point_name("quickstart-tiny-lora", {"lr": "2e-3", "rank": "8"}) == "quickstart-tiny-lora lr=2e-3 rank=8"
    long = point_name("n" * 200, {"lr": "2e-3"})
    assert len(long) == 128 and long.endswith(" lr=2e-3")


def test_plan_names_each_point_and_keeps_an_explicit_name(hpcft_home):
    from hpcft.jobs.submit import plan

    p = plan(["+experiment=quickstart", "executor=local", "training.learning_rate=1e-3,2e-3,5e-3"], multirun=True)
    assert [c.name for c in p.configs] == ["quickstart-tiny-lora lr=1e-3", "quickstart-tiny-lora lr=2e-3",
                                           "quickstart-tiny-lora lr=5e-3"]
    assert p.sweep[1] == {"base": "quickstart-tiny-lora", "values": {"lr": "2e-3"}, "label": "lr=2e-3"}
    mine = plan(["name=mine", "executor=local", "method.lora.rank=4,8"], multirun=True)
    assert [c.name for c in mine.configs] == ["mine rank=4", "mine rank=8"]
    assert plan(["executor=local"]).configs[0].name == "tiny-lora" and plan(["executor=local"]).sweep == []


def _fake_run(job, train_losses, val_losses, summary_loss=None, key="loss"):
    """metrics.jsonl as the trainers write it (train lines, then validation lines) for the comparison's arithmetic."""
    from pathlib import Path

    out = Path(job.output_dir)
    lines = [{"type": "train", "step": i + 1, "loss": v} for i, v in enumerate(train_losses)]
    lines += [{"type": "eval", "split": "validation", "step": 2 * (i + 1), key: v} for i, v in enumerate(val_losses)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if summary_loss is not None:
        (out / "summary.json").write_text(json.dumps({"final_train_loss": summary_loss, "final_step": 9}))


def test_hpcft_sweep_compares_points_best_first(hpcft_home):
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.submit import create_jobs, plan
    from hpcft.ledger.sweeps import compare

    ledger = Ledger()
    other = create_jobs(ledger, plan(["executor=local"]))  # a job that is no sweep's point
    p = plan(["executor=local", "training.learning_rate=1e-3,2e-3,5e-3", "method.lora.rank=4"], multirun=True)
    a, b, c = create_jobs(ledger, p)
    _fake_run(a, [3.0, 2.5], [2.9, 2.7])
    _fake_run(b, [3.0, 2.0], [2.6, 1.9, 2.2], summary_loss=1.95)  # best val 1.9 although its last is 2.2
    # c: queued, no metrics yet -> last
    r = subprocess.run(hpcft_cli() + ["sweep", str(b.id)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sweep {a.id}: tiny-lora, 3 points, best first by validation loss (lowest)"
    assert [ln.split() for ln in lines[2:5]] == [
        [str(b.id), "2e-3", "queued", "9", "1.9500", "1.9000", "4"],
        [str(a.id), "1e-3", "queued", "2", "2.5000", "2.7000", "4"],
        [str(c.id), "5e-3", "queued", "-", "-", "-", "-"]]
    assert lines[5] == f"best: job {b.id} tiny-lora lr=2e-3 (validation loss 1.9000, state queued)"
    js = compare(ledger, a.id)  # what --json prints
    assert [row["id"] for row in js["rows"]] == [b.id, a.id, c.id] and js["keys"] == ["lr"]
    assert json.loads(json.dumps(js)) == js
    listed = subprocess.run(hpcft_cli() + ["sweep"], capture_output=True, text=True).stdout.splitlines()
    assert listed[1].split() == [str(a.id), "tiny-lora", "3", "3", "queued"]
    assert len(listed) == 2  # the lone job is no sweep
    missing = subprocess.run(hpcft_cli() + ["sweep", str(other[0].id)], capture_output=True, text=True)
    assert missing.returncode == 3 and missing.stderr.startswith(f"error: sweep {other[0].id}: no such sweep")


def test_reward_sweeps_rank_by_highest_validation_accuracy(hpcft_home):
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.submit import create_jobs, plan
    from hpcft.ledger.sweeps import compare

    ledger = Ledger()
    a, b = create_jobs(ledger, plan(["executor=local", "method=reward", "data=tiny_pref",
                                     "training.learning_rate=1e-3,2e-3"], multirun=True))
    _fake_run(a, [0.7], [0.6, 0.9], key="accuracy")
    _fake_run(b, [0.6], [0.8], key="accuracy")
    cmp = compare(ledger, a.id)
    assert cmp["metric"] == "validation accuracy" and cmp["higher_is_better"]
    assert [(r["id"], r["best"]) for r in cmp["rows"]] == [(a.id, 0.9), (b.id, 0.8)]


def test_without_validation_the_train_loss_ranks(hpcft_home):
    from hpcft.ledger.store import Ledger
    from hpcft.jobs.submit import create_jobs, plan
    from hpcft.ledger.sweeps import compare

    ledger = Ledger()
    a, b = create_jobs(ledger, plan(["executor=local", "training.seed=1,2"], multirun=True))
    _fake_run(a, [3.0, 2.0], [])
    _fake_run(b, [3.0, 1.0], [])
    cmp = compare(ledger, a.id)
    assert cmp["metric"] == "train loss" and [r["id"] for r in cmp["rows"]] == [b.id, a.id]
    assert [r["name"] for r in cmp["rows"]] == ["tiny-lora seed=2", "tiny-lora seed=1"]
