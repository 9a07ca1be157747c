"""method=t2i_lora: LoRA on a tiny diffusers UNet (built from configs) on the shipped 32x32 shapes."""

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import ctx_for, torch_threads, job_config as load  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.mark.train
def test_t2i_lora_learns_saves_samples_and_reloads_into_a_pipeline(tmp_path):
    import numpy as np
    import torch
    from PIL import Image

    import trainers.text_to_image as t2i

    cfg = load(tmp_path, "+experiment=t2i_lora_tiny", "method.num_inference_steps=4",
               "training.keep_checkpoints=2")  # 5 epochs x 6 steps
    ctx = ctx_for(tmp_path)
    summary = t2i.train(cfg, ctx)
    assert summary["final_step"] == summary["total_steps"] == summary["steps_this_run"] == 30
    assert summary["method"] == "t2i_lora" and summary["resumed_from"] is None
    assert summary["final_model"] == str(tmp_path / "final") and summary["base_model"] == str(tmp_path / "base")
    assert summary["method_info"]["samples"] == [str(tmp_path / "samples" / "epoch-5" / f"{i:02d}.png")
                                                 for i in range(2)]

    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in rows if r["type"] == "train"]
    assert len(loss) == 30
    k = 8
    assert sum(loss[-k:]) / k < 0.9 * sum(loss[:k]) / k, loss
    val = [r["loss"] for r in rows if r["type"] == "eval" and r["split"] == "validation"]
    assert len(val) == 5 and val[-1] < val[0]
    assert {r["split"] for r in rows if r["type"] == "eval"} == {"validation", "test"}
    assert [d["epoch"] for kind, _, d in ctx.events if kind == "epoch"] == [1, 2, 3, 4, 5]
    # save_strategy=epoch (the default), keep_checkpoints=2: the last two epochs' checkpoints, `latest` the newest
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-00000024",
                                                                          "step-00000030"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000030"
    assert [(d["step"], d["reason"]) for kind, _, d in ctx.events if kind == "checkpoint"] == [
        (6 * e, "epoch") for e in range(1, 6)]
    assert all(d["path"] == str(tmp_path / "checkpoints" / f"step-{d['step']:08d}")
               for kind, _, d in ctx.events if kind == "checkpoint")

    for ep in range(1, 6):
        pngs = sorted((tmp_path / "samples" / f"epoch-{ep}").glob("*.png"))
        assert len(pngs) == 2 and Image.open(pngs[0]).size == (32, 32)

    final = tmp_path / "final"
    assert (final / t2i.LORA_FILE).exists()
    base = str(tmp_path / "base")
    prompt = cfg.method.sample_prompts[0]

    def render(pipe):
        g = torch.Generator().manual_seed(cfg.training.seed)
        return np.asarray(pipe(prompt, num_inference_steps=4, guidance_scale=cfg.method.guidance_scale,
                               height=32, width=32, generator=g).images[0]).astype(int)

    plain = render(t2i.load_pipeline(base))
    tuned = render(t2i.load_pipeline(base, str(final)))
    last_sample = np.asarray(Image.open(tmp_path / "samples" / "epoch-5" / "00.png")).astype(int)
    assert np.abs(tuned - last_sample).max() <= 1  # the reloaded LoRA reproduces the trained model's sample
    assert np.abs(tuned - plain).mean() > 1.0  # and it changes the output of the base pipeline


@pytest.mark.train
def test_t2i_resume_from_latest_checkpoint(tmp_path):
    import trainers.text_to_image as t2i

    common = ["+experiment=t2i_lora_tiny", "method.num_sample_images=0", "training.save_strategy=steps",
              "training.save_interval=3"]
    t2i.train(load(tmp_path, *common, "training.max_steps=3"), ctx_for(tmp_path))
    s = t2i.train(load(tmp_path, *common, "training.max_steps=6", "training.resume_from=latest"), ctx_for(tmp_path))
    assert s["final_step"] == 6 and s["steps_this_run"] == 3
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["type"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_image_caption_reader(tmp_path):
    from hpcft.train.jsonl import DataError
    from hpcft.train.preference_data import load_image_captions

    (tmp_path / "a.png").write_bytes(b"x")
    p = tmp_path / "c.jsonl"
    p.write_text('{"image": "a.png", "caption": "x"}\n{"image": "b.png", "caption": "y"}\n')
    with pytest.raises(DataError, match=rf"{p}:2: field 'image': file not found"):
        load_image_captions(p)
    p.write_text('{"image": "a.png"}\n')
    with pytest.raises(DataError, match=rf"{p}:1: missing field 'caption'"):
        load_image_captions(p)


def test_t2i_checks():
    import hpcft.jobs.preflight
    from hpcft.errors import ConfigError
    from hpcft.config.methods import check_method

    with pytest.raises(ConfigError, match="model.arch.model_type"):
        check_method(hpcft.jobs.preflight.load(["method=t2i_lora", "data=tiny_images"]))  # default model: tiny Llama
    with pytest.raises(ConfigError, match="method=dpo trains a language model"):
        check_method(hpcft.jobs.preflight.load(["method=dpo", "data=tiny_pref", "model=tiny_sd"]))
    with pytest.raises(ConfigError, match="method.resolution"):
        check_method(hpcft.jobs.preflight.load(["+experiment=t2i_lora_tiny", "method.resolution=30"]))
    check_method(hpcft.jobs.preflight.load(["model=sd15", "method=t2i_lora", "data=tiny_images"]))
