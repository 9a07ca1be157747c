"""reward, dpo, grpo and t2i_lora with several processes (torchrun, 2 ranks, gloo on CPU) and with DeepSpeed ZeRO:
every rank trains on its share of the data, the weights stay identical on all ranks, rank 0 alone writes."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.train_helpers import adapter_and_base_logits

REPO = Path(__file__).resolve().parents[2]
os.environ["HF_HUB_OFFLINE"] = "1"


def _torchrun(run_dir: Path, overrides, port: int):
    from omegaconf import OmegaConf

    from hpcft.jobs.preflight import load

    cfg = load(overrides)
    cfg.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    torchrun = Path(sys.executable).with_name("torchrun")
    p = subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m",
                        "hpcft.train.entry", "--config", str(run_dir / "config.yaml")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-6000:]
    return json.loads((run_dir / "summary.json").read_text())


def _train_rows(run_dir: Path):
    from hpcft.rundir.metrics_io import read_metrics

    return read_metrics(run_dir, "train")


def _check_parallel_run(run_dir: Path, s: dict, steps: int, stage):
    assert s["world_size"] == 2 and s["deepspeed_stage"] == stage
    assert s["final_step"] == steps and s["total_steps"] == steps
    assert len(s["param_hashes"]) == 2 and s["param_hashes"][0] == s["param_hashes"][1]
    rows = _train_rows(run_dir)
    assert rows, "no train metrics"
    # one line per logged step: only rank 0 writes metrics.jsonl
    assert len({r["step"] for r in rows}) == len(rows)
    assert all(math.isfinite(r["loss"]) for r in rows)
    return rows


PREF = ["data=tiny_pref", "training.batch_size=8", "training.sequence_length=64", "training.epochs=1",
        "training.max_steps=null"]


@pytest.mark.slow
@pytest.mark.train
def test_dpo_lora_zero2_two_processes(tmp_path):
    import torch

    run = tmp_path / "run"
    s = _torchrun(run, ["method=dpo", *PREF, "training.learning_rate=5e-3", "deepspeed=zero2"], port=29811)
    # 256 pairs / (batch 8 x 2 ranks) = 16 steps: each rank saw half the epoch (one process would take 32)
    rows = _check_parallel_run(run, s, 16, stage=2)
    assert s["method_info"]["lora"] is True
    assert rows[-1]["loss"] < rows[0]["loss"]
    a, b = adapter_and_base_logits(run)
    assert torch.isfinite(a).all() and not torch.allclose(a, b)


@pytest.mark.slow
@pytest.mark.train
def test_reward_two_processes_plain_ddp(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    run = tmp_path / "run"
    s = _torchrun(run, ["method=reward", *PREF, "training.learning_rate=1e-3", "deepspeed=none"], port=29812)
    rows = _check_parallel_run(run, s, 16, stage=None)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert s["final_metrics"]["validation_accuracy"] > 0.8
    model = AutoModelForSequenceClassification.from_pretrained(run / "final").eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


@pytest.mark.slow
@pytest.mark.train
def test_grpo_full_weights_zero3_two_processes(tmp_path):
    """ZeRO-3 partitions the weights that GRPO generates with: trl gathers them for generation, and the final
    model is gathered into plain HF weights (ZeRO-3 partitions are gathered first)."""
    import torch
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    s = _torchrun(run, ["+experiment=grpo_tiny", "training.max_steps=3", "deepspeed=zero3"], port=29813)
    _check_parallel_run(run, s, 3, stage=3)
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    base = AutoModelForCausalLM.from_pretrained(run / "base")
    assert torch.isfinite(final.lm_head.weight).all()
    assert not torch.equal(final.lm_head.weight, base.lm_head.weight)


@pytest.mark.slow
@pytest.mark.train
def test_t2i_lora_two_processes_ddp(tmp_path):
    from safetensors.torch import load_file

    import trainers.text_to_image as t2i

    run = tmp_path / "run"
    s = _torchrun(run, ["+experiment=t2i_lora_tiny", "training.epochs=2", "method.num_sample_images=1",
                        "method.num_inference_steps=2", "training.save_strategy=steps", "training.save_interval=3"],
                  port=29814)
    # 24 images / (batch 4 x 2 ranks) = 3 steps per epoch (one process: 6)
    rows = _check_parallel_run(run, s, 6, stage=None)
    assert [r["step"] for r in rows] == list(range(1, 7))
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert sorted((r["split"], r["epoch"]) for r in evals) == [("test", 1), ("test", 2),
                                                                ("validation", 1), ("validation", 2)]
    assert all(math.isfinite(r["loss"]) for r in evals)
    state = json.loads((run / "checkpoints" / "step-00000006" / "state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 6
    lora = load_file(str(run / "final" / t2i.LORA_FILE))
    assert lora and all(v.isfinite().all() for v in lora.values())
    assert any(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k or "lora.up" in k)
    assert len(list((run / "samples" / "epoch-2").glob("*.png"))) == 1


def test_t2i_refuses_deepspeed_but_accepts_several_processes():
    import hpcft.jobs.preflight
    from hpcft.errors import ConfigError
    from hpcft.config.methods import check_method

    with pytest.raises(ConfigError) as e:
        check_method(hpcft.jobs.preflight.load(["+experiment=t2i_lora_tiny", "deepspeed=zero2"]))
    msg = str(e.value)
    assert msg.startswith("deepspeed.stage=2: t2i_lora trains only the UNet's LoRA adapters with torch DDP")
    assert "use deepspeed=none" in msg and "\n" not in msg
    check_method(hpcft.jobs.preflight.load(["+experiment=t2i_lora_tiny", "resources.tasks_per_node=2",
                                    "resources.nodes=2"]))


@pytest.mark.parametrize("method", ["dpo", "reward", "grpo"])
def test_trl_deepspeed_config_is_the_generated_one(tmp_path, method):
    from support.train_helpers import job_config

    from hpcft.train.context import RunContext
    from trainers._trl_common import deepspeed_dict

    data = "tiny_prompts" if method == "grpo" else "tiny_pref"
    ctx = RunContext(output_dir=tmp_path, rank=0, world_size=2)
    assert deepspeed_dict(job_config(tmp_path, f"method={method}", f"data={data}", "deepspeed=none"), ctx) is None
    cfg = job_config(tmp_path, f"method={method}", f"data={data}", "deepspeed=zero3", "training.batch_size=8",
                     "training.gradient_accumulation=2")
    ds = deepspeed_dict(cfg, ctx)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["train_batch_size"] == 8 * 2 * 2
    assert "optimizer" not in ds  # the Trainer hands DeepSpeed a torch optimizer: no C++ build (DeepSpeed's own optimizers are C++ extensions)
