"""method=dpo (trl DPOTrainer, LoRA and full weights) on the shipped preference pairs, and the preference reader."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import adapter_and_base_logits, ctx_for, torch_threads, metrics_rows as rows, job_config  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def cfg_for(tmp_path, *overrides):
    return job_config(tmp_path, "method=dpo", "data=tiny_pref", "training.batch_size=8", "training.learning_rate=5e-3",
                             "training.sequence_length=64", *overrides)


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.train
def test_dpo_lora_learns_saves_and_reloads(tmp_path):
    import torch

    import trainers.dpo

    ctx = ctx_for(tmp_path)
    summary = trainers.dpo.train(cfg_for(tmp_path, "training.max_steps=30", "training.save_strategy=steps",
                                         "training.save_interval=15"), ctx)
    assert summary["final_step"] == 30 and summary["method_info"]["lora"] is True
    train = rows(tmp_path, "train")
    loss = [r["loss"] for r in train]
    margin = [r["rewards/margins"] for r in train]
    assert abs(loss[0] - 0.6931) < 1e-3  # policy == reference at step 1: loss is log 2
    assert mean(loss[-5:]) < 0.5 * loss[0], loss
    assert mean(margin[-5:]) > 0.5 > margin[0], margin
    from hpcft.cli.monitor_cmds import curve_report  # `hpcft curve`: reward margin and accuracy, then the loss

    text, panels = curve_report(rows(tmp_path), "dpo", "job 1 dpo")
    assert text.splitlines()[0] == f"job 1 dpo: train reward margin {margin[0]:.4f} -> {margin[-1]:.4f} over 30 steps"
    assert [p[0] for p in panels] == ["reward margin", "reward accuracy", "loss"]
    assert "validation reward accuracy by epoch: " in text and "validation loss by epoch: " in text
    evals = {r["split"]: r for r in rows(tmp_path, "eval")}
    assert evals["validation"]["rewards/accuracies"] >= 0.9 and evals["test"]["rewards/margins"] > 0.5
    assert "epoch" in {k for k, _, _ in ctx.events}
    assert [(d["step"], d["path"]) for k, _, d in ctx.events if k == "checkpoint"] == [
        (s, str(tmp_path / "checkpoints" / f"step-{s:08d}")) for s in (15, 30)]

    tuned, base = adapter_and_base_logits(tmp_path)
    assert not torch.allclose(tuned, base)


@pytest.mark.train
def test_dpo_full_weights_uses_base_as_reference(tmp_path):
    import trainers.dpo

    summary = trainers.dpo.train(cfg_for(tmp_path, "method.lora=null", "training.max_steps=8",
                                         "training.learning_rate=2e-4"), ctx_for(tmp_path))
    train = rows(tmp_path, "train")
    assert summary["method_info"]["lora"] is False and summary["final_step"] == 8
    assert train[-1]["rewards/margins"] > train[0]["rewards/margins"]
    assert train[-1]["loss"] < train[0]["loss"]
    assert (tmp_path / "final" / "model.safetensors").exists()


def test_preference_reader_names_file_line_and_field(tmp_path):
    from hpcft.train.jsonl import DataError
    from hpcft.train.preference_data import load_preference

    p = tmp_path / "pref.jsonl"
    p.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": "b"}\n')
    with pytest.raises(DataError) as e:
        load_preference(p)
    msg = str(e.value)
    assert f"{p}:3:" in msg and "'rejected'" in msg and "preference" in msg
    p.write_text('{"prompt": "a", "chosen": 3, "rejected": "c"}\n')
    with pytest.raises(DataError, match=r":1: field 'chosen' must be a string"):
        load_preference(p)
    p.write_text("")
    with pytest.raises(DataError, match="no records"):
        load_preference(p)
    recs = load_preference(Path(__file__).resolve().parents[2] / "hpcft/assets/data/tiny_pref/train.jsonl")
    assert len(recs) == 256 and set(recs[0]) == {"prompt", "chosen", "rejected"}


def test_method_checks_reject_wrong_data_format():
    import hpcft.jobs.preflight
    from hpcft.errors import ConfigError
    from hpcft.config.methods import check_method

    with pytest.raises(ConfigError, match="data.format=prompt_response: method=dpo"):
        check_method(hpcft.jobs.preflight.load(["method=dpo", "data=tiny_sft"]))
    with pytest.raises(ConfigError, match="method.beta"):
        check_method(hpcft.jobs.preflight.load(["method=dpo", "data=tiny_pref", "method.beta=0"]))
    with pytest.raises(ConfigError, match="method.loss_type"):
        check_method(hpcft.jobs.preflight.load(["method=dpo", "data=tiny_pref", "method.loss_type=nope"]))
    check_method(hpcft.jobs.preflight.load(["method=dpo", "data=tiny_pref"]))
