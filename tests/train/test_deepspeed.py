"""DeepSpeed: the generated JSON config, and real 2-process ZeRO runs on CPU (gloo) through torchrun."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
os.environ["HF_HUB_OFFLINE"] = "1"


def test_ds_config_follows_training_and_deepspeed_sections():
    from hpcft.jobs.preflight import load
    from hpcft.train.deepspeed_config import build_ds_config

    cfg = load(["deepspeed=zero3_offload", "training.batch_size=4", "training.gradient_accumulation=3",
                "training.precision=bf16", "training.max_grad_norm=0.5", "+deepspeed.extra.steps_per_print=7"])
    ds = build_ds_config(cfg.deepspeed, cfg.training, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 4
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 24
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["gradient_clipping"] == 0.5
    z = ds["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"] is True
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert ds["steps_per_print"] == 7  # extra is merged last
    json.dumps(ds)

    plain = build_ds_config(load(["deepspeed=none"]).deepspeed, cfg.training, world_size=1)
    assert plain["zero_optimization"]["stage"] == 0 and "offload_optimizer" not in plain["zero_optimization"]


@pytest.mark.parametrize("name", ["zero0", "zero1", "zero2", "zero3", "zero3_offload"])
def test_shipped_deepspeed_configs_compose(name):
    from hpcft.jobs.preflight import load

    cfg = load([f"deepspeed={name}"])
    assert cfg.deepspeed.name == name and cfg.deepspeed.stage in (0, 1, 2, 3)
    first = (REPO / "conf" / "deepspeed" / f"{name}.yaml").read_text().splitlines()[0]
    assert first.startswith(f"# Launch: hpcft submit deepspeed={name}")


def _torchrun(run_dir, overrides, env_extra=None, port=29600):
    from omegaconf import OmegaConf

    from hpcft.jobs.preflight import load

    cfg = load(overrides)
    cfg.output_dir = str(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **(env_extra or {}))
    torchrun = Path(sys.executable).with_name("torchrun")
    return subprocess.run([str(torchrun), "--nproc_per_node", "2", "--master_port", str(port), "-m",
                           "hpcft.train.entry", "--config", str(run_dir / "config.yaml")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _read(run_dir, type):
    from hpcft.rundir.metrics_io import read_metrics

    return read_metrics(run_dir, type)


COMMON = ["method=full", "training.max_steps=6", "training.batch_size=4", "training.sequence_length=48",
          "training.learning_rate=3e-3", "training.log_sample_ids=true"]


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("stage", [2, 1, 3])
def test_two_process_zero_run(tmp_path, stage):
    import torch
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    p = _torchrun(run, COMMON + [f"deepspeed=zero{stage}", "training.save_strategy=steps",
                                 "training.save_interval=3"], port=29600 + stage)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["world_size"] == 2 and s["deepspeed_stage"] == stage and s["final_step"] == 6
    assert len(s["param_hashes"]) == 2 and s["param_hashes"][0] == s["param_hashes"][1]
    lines = _read(run, "train")
    assert [r["step"] for r in lines] == list(range(1, 7))
    assert lines[-1]["loss"] < lines[0]["loss"]
    for r in lines:  # both ranks' samples: 2 x batch 4, disjoint within a step
        assert len(r["samples"]) == 8 and len(set(r["samples"])) == 8
    ids = [i for r in lines for i in r["samples"]]
    assert len(ids) == len(set(ids))
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    # final/ is a normal HF model (gathered under ZeRO-3), different from the base
    final = AutoModelForCausalLM.from_pretrained(run / "final")
    base = AutoModelForCausalLM.from_pretrained(s["base_model"])
    assert not torch.equal(final.lm_head.weight, base.lm_head.weight)
    assert torch.isfinite(final.lm_head.weight).all()


@pytest.mark.slow
@pytest.mark.train
def test_two_process_zero2_resume_after_kill(tmp_path):
    run = tmp_path / "run"
    over = COMMON + ["deepspeed=zero2", "training.save_strategy=steps", "training.save_interval=2"]
    killed = _torchrun(run, over, {"HPCFT_TEST_CRASH_AT_STEP": "3"}, port=29611)
    assert killed.returncode != 0
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000002"
    resumed = _torchrun(run, over + ["training.resume_from=latest"], port=29612)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    s = json.loads((run / "summary.json").read_text())
    assert s["final_step"] == 6 and s["steps_this_run"] == 4
    assert s["param_hashes"][0] == s["param_hashes"][1]
    seen = {r["step"]: r["samples"] for r in _read(run, "train")}
    assert sorted(seen) == list(range(1, 7))
    ids = [i for st in seen.values() for i in st]
    assert len(ids) == len(set(ids)), "a sample was seen twice in the epoch"
