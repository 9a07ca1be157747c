"""method=reward: trl RewardTrainer on the shipped preference pairs with the tiny Llama (CPU, a few dozen steps)."""

import json
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import ctx_for, torch_threads, metrics_rows as read_metrics, job_config  # noqa: E402
pytestmark = pytest.mark.train


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def cfg_for(tmp_path, *overrides):
    return job_config(tmp_path, "method=reward", "data=tiny_pref", "training.batch_size=8",
                             "training.learning_rate=1e-3", "training.sequence_length=64", *overrides)


def test_reward_model_learns_saves_and_reloads(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import trainers.reward
    from hpcft.train.preference_data import load_preference

    cfg = cfg_for(tmp_path, "training.max_steps=30", "training.save_strategy=steps", "training.save_interval=10")
    ctx = ctx_for(tmp_path)
    summary = trainers.reward.train(cfg, ctx)

    assert summary["final_step"] == summary["total_steps"] == summary["steps_this_run"] == 30
    assert summary["method_info"] == {"lora": False} and summary["resumed_from"] is None
    rows = read_metrics(tmp_path)
    train = [r for r in rows if r["type"] == "train"]
    evals = {r["split"]: r for r in rows if r["type"] == "eval"}
    assert set(evals) == {"validation", "test"}
    first, last = train[0], train[-1]
    assert last["loss"] < 0.5 * first["loss"], (first["loss"], last["loss"])
    assert first["accuracy"] <= 0.75  # a random head is near chance on the first batch
    assert evals["validation"]["accuracy"] >= 0.9 and evals["test"]["accuracy"] >= 0.9, evals
    from hpcft.cli.monitor_cmds import curve_report  # `hpcft curve`: pairwise accuracy first, loss beside

    text, panels = curve_report(rows, "reward", "job 1 rm")
    assert text.splitlines()[0] == (f"job 1 rm: train pairwise accuracy {first['accuracy']:.4f} -> "
                                    f"{last['accuracy']:.4f} over 30 steps")
    assert [p[0] for p in panels] == ["pairwise accuracy", "reward margin", "loss"]
    assert f"test pairwise accuracy by epoch: {evals['test']['accuracy']:.4f}" in text
    assert all("lr" in r and "step" in r for r in train)
    kinds = [k for k, _, _ in ctx.events]
    assert "epoch" in kinds
    ckpt_root = tmp_path / "checkpoints"
    assert [(d["step"], d["path"], d["reason"]) for k, _, d in ctx.events if k == "checkpoint"] == [
        (s, str(ckpt_root / f"step-{s:08d}"), "interval") for s in (10, 20, 30)]
    assert (ckpt_root / "latest").read_text().strip() == "step-00000030"
    epoch_data = next(d for k, _, d in ctx.events if k == "epoch")
    assert "validation_accuracy" in epoch_data and "test_accuracy" in epoch_data
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["final_model"] == str(tmp_path / "final")
    assert written["eval"]["validation"]["accuracy"] == evals["validation"]["accuracy"]
    assert written["final_metrics"]["test_accuracy"] == evals["test"]["accuracy"]

    # reload final/ and score the test pairs: the chosen answer must win
    final = tmp_path / "final"
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    pairs = load_preference(cfg.data.test)[:16]
    with torch.no_grad():
        def score(texts):
            b = tok(texts, return_tensors="pt", padding=True)
            return model(**b).logits[:, 0]

        chosen = score([p["prompt"] + p["chosen"] for p in pairs])
        rejected = score([p["prompt"] + p["rejected"] for p in pairs])
    assert (chosen > rejected).float().mean().item() >= 0.9


def test_reward_lora_saves_adapter_and_loads_as_reward_model(tmp_path):
    import torch

    import trainers.reward
    from hpcft.train.rewards import load_reward_model

    cfg = cfg_for(tmp_path, "method=reward_lora", "training.max_steps=12")
    assert cfg.method.lora is not None
    summary = trainers.reward.train(cfg, ctx_for(tmp_path))
    assert summary["final_step"] == 12 and summary["method_info"] == {"lora": True}
    final = tmp_path / "final"
    assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
    model, tok = load_reward_model(str(final))
    with torch.no_grad():
        b = tok(["What is 1 plus 2?1 plus 2 is 3.", "What is 1 plus 2?NO IDEA!!! MAYBE 5???"], return_tensors="pt",
                padding=True)
        s = model(**b).logits[:, 0]
    assert s[0] > s[1]


def test_epoch_checkpoints_honour_save_interval_and_off_saves_none(tmp_path):
    """save_strategy=epoch with save_interval=2 saves after every 2nd epoch (transformers' own policy would save
    after each); keep_checkpoints=off never saves."""
    import trainers.reward
    from hpcft.train.checkpoint import list_checkpoints, read_state

    small = tmp_path / "pairs.jsonl"  # 16 pairs / batch 8 = 2 steps per epoch
    src = Path(__file__).resolve().parents[2] / "hpcft/assets/data/tiny_pref/train.jsonl"
    small.write_text("".join(src.read_text().splitlines(keepends=True)[:16]))
    run = tmp_path / "epochs"
    ctx = ctx_for(run)
    trainers.reward.train(cfg_for(run, f"data.train={small}", "data.test=null", "training.epochs=4",
                                  "training.save_strategy=epoch", "training.save_interval=2"), ctx)
    ckpts = list_checkpoints(run / "checkpoints")
    assert [(read_state(d)["step"], read_state(d)["epoch"], read_state(d)["reason"]) for d in ckpts] == [
        (4, 2, "epoch"), (8, 4, "epoch")]
    assert [d["step"] for k, _, d in ctx.events if k == "checkpoint"] == [4, 8]

    off = tmp_path / "off"
    summary = trainers.reward.train(cfg_for(off, f"data.train={small}", "data.test=null", "training.epochs=2",
                                            "training.save_strategy=epoch", "training.keep_checkpoints=off"),
                                    ctx_for(off))
    assert summary["final_step"] == 4 and not list((off / "checkpoints").glob("*-*"))
