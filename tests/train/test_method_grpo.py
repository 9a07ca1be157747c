"""method=grpo (trl GRPOTrainer) with the tiny Llama: a learnable rule reward, and a reward model trained by
method=reward; plus the reward registry and the prompt reader."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import ctx_for, torch_threads, metrics_rows as rows, job_config as load  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.train
def test_grpo_mean_reward_rises(tmp_path):
    import trainers.grpo

    cfg = load(tmp_path, "+experiment=grpo_tiny")  # char_fraction of lowercase letters, 30 steps
    ctx = ctx_for(tmp_path)
    summary = trainers.grpo.train(cfg, ctx)
    assert summary["final_step"] == 30
    assert summary["method_info"] == {"lora": False, "reward_functions": ["char_fraction:abcdefghijklmnopqrstuvwxyz"]}
    reward = [r["reward"] for r in rows(tmp_path, "train")]
    assert mean(reward[-5:]) > mean(reward[:5]) + 0.2, reward
    from hpcft.cli.monitor_cmds import curve_report  # `hpcft curve` shows the reward, not GRPO's near-0 loss

    text, panels = curve_report(rows(tmp_path), "grpo", "job 1 grpo-tiny")
    assert text.splitlines()[0] == (f"job 1 grpo-tiny: train mean reward {reward[0]:.4f} -> {reward[-1]:.4f} "
                                    "over 30 steps")
    assert [p[0] for p in panels] == ["mean reward", "loss"] and set(panels[0][2]) == {"train", "validation", "test"}
    evals = {r["split"]: r for r in rows(tmp_path, "eval")}
    assert set(evals) == {"validation", "test"} and evals["validation"]["reward"] > mean(reward[:5])
    assert "epoch" in {k for k, _, _ in ctx.events}
    assert (tmp_path / "final" / "model.safetensors").exists()


@pytest.mark.train
def test_grpo_with_reward_model_from_reward_trainer(tmp_path):
    import trainers.grpo
    import trainers.reward

    rm_dir = tmp_path / "rm"
    trainers.reward.train(load(rm_dir, "method=reward", "data=tiny_pref", "training.max_steps=10",
                               "training.batch_size=8", "training.learning_rate=1e-3",
                               "training.sequence_length=64"), ctx_for(rm_dir))
    out = tmp_path / "grpo"
    cfg = load(out, "method=grpo", "data=tiny_prompts", "training.max_steps=3", "training.batch_size=8",
               "method.max_completion_length=8", "method.beta=0.04",
               "method.reward_functions=[reward_model,length:8]", f"method.reward_model={rm_dir / 'final'}")
    summary = trainers.grpo.train(cfg, ctx_for(out))
    assert summary["final_step"] == 3
    assert summary["method_info"]["reward_functions"] == ["reward_model", "length:8"]
    train = rows(out, "train")
    rm_keys = [k for k in train[0] if k.startswith("rewards/") and k.endswith("/mean") and "length" not in k]
    assert rm_keys, train[0]  # the reward model's score is logged next to the length reward
    assert "kl" in train[-1]  # beta > 0: the reference model was loaded from the base path


def test_reward_registry():
    from hpcft.errors import ConfigError
    from hpcft.train.rewards import build_rewards, parse_reward_spec

    funcs, procs = build_rewards(["length:4", "contains:cat", "format_regex:[a-z]+", "char_fraction:ab"])
    c = ["abcd", "a cat sat", "ABC", ""]
    assert funcs[0](prompts=None, completions=c) == [1.0, 0.0, 0.75, 0.0]
    assert funcs[1](prompts=None, completions=c) == [0.0, 1.0, 0.0, 0.0]
    assert funcs[2](prompts=None, completions=c) == [1.0, 0.0, 0.0, 0.0]
    assert funcs[3](prompts=None, completions=c) == [0.5, 3 / 9, 0.0, 0.0]
    assert procs == [None] * 4
    assert funcs[1](completions=[[{"role": "assistant", "content": "my cat"}]]) == [1.0]
    for bad in ("nope", "contains", "length:x", "format_regex:("):
        with pytest.raises(ConfigError, match="method.reward_functions"):
            parse_reward_spec(bad)
    with pytest.raises(ConfigError, match="method.reward_model"):
        build_rewards(["reward_model"], None)


def test_grpo_method_checks(tmp_path):
    import hpcft.jobs.preflight
    from hpcft.errors import ConfigError
    from hpcft.config.methods import check_method

    with pytest.raises(ConfigError, match="method.reward_model"):
        check_method(hpcft.jobs.preflight.load(["method=grpo", "data=tiny_prompts", "method.reward_functions=[reward_model]"]))
    with pytest.raises(ConfigError, match="multiple of method.num_generations"):
        check_method(hpcft.jobs.preflight.load(["method=grpo", "data=tiny_prompts", "training.batch_size=6"]))
    with pytest.raises(ConfigError, match="unknown reward function"):
        check_method(hpcft.jobs.preflight.load(["method=grpo", "data=tiny_prompts", "method.reward_functions=[bogus]"]))
    check_method(hpcft.jobs.preflight.load(["method=grpo", "data=tiny_sft"]))  # prompts of an SFT set are fine


def test_prompt_reader(tmp_path):
    from hpcft.train.jsonl import DataError
    from hpcft.train.preference_data import load_prompts

    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2", "x": 1}\n{"text": "c"}\n')
    with pytest.raises(DataError, match=rf"{p}:3: missing field 'prompt'"):
        load_prompts(p)
    p.write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answer": "2", "x": 1}\n')
    assert load_prompts(p) == [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}]
