"""Really trains the tiny Llama (hidden 64, 2 layers, byte tokenizer) on CPU, a few dozen steps at most."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[2]

from support.train_helpers import ctx_for as Ctx, job_config, torch_threads  # noqa: E402


@pytest.fixture(autouse=True)
def few_threads():
    with torch_threads(2):
        yield


def make_cfg(out, *overrides):
    return job_config(out, "training.sequence_length=64", "training.batch_size=8", *overrides)


def train(cfg):
    from hpcft.train.entry import run

    ctx = Ctx(cfg.output_dir)
    return run(cfg, ctx), ctx


def metrics(out, type=None):
    from hpcft.rundir.metrics_io import read_metrics

    return read_metrics(out, type)


def mean(xs):
    return sum(xs) / len(xs)


def test_lora_learns_and_adapter_reloads_with_same_logits(tmp_path):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    from hpcft.train.checkpoint import latest_checkpoint, load_trainable

    out = tmp_path / "run"
    cfg = make_cfg(out, "method=lora", "training.max_steps=30", "training.learning_rate=1e-2",
                   "training.save_strategy=steps", "training.save_interval=30", "training.warmup_ratio=0.1")
    summary, ctx = train(cfg)
    assert summary["final_step"] == 30
    losses = [r["loss"] for r in metrics(out, "train")]
    assert len(losses) == 30
    assert mean(losses[-5:]) < mean(losses[:5]) - 0.1
    train_lines = metrics(out, "train")
    assert {"step", "epoch", "loss", "lr", "tokens_per_s", "peak_mem_mb", "time"} <= set(train_lines[0])
    evals = metrics(out, "eval")
    assert {e["split"] for e in evals} == {"validation", "test"}
    assert all(abs(e["perplexity"] - __import__("math").exp(e["loss"])) < 1e-6 * e["perplexity"] for e in evals)
    assert [k for k, _, _ in ctx.events].count("checkpoint") == 1
    assert json.loads((out / "summary.json").read_text())["final_step"] == 30
    final = out / "final"
    assert (final / "adapter_model.safetensors").is_file() and (final / "tokenizer.json").is_file()

    # the trained model, rebuilt independently from the last checkpoint's trainable weights
    base_path = summary["base_model"]
    torch.manual_seed(0)
    lc = cfg.method.lora
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(base_path),
                             LoraConfig(r=lc.rank, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                        target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
    load_trainable(trained, latest_checkpoint(out / "checkpoints") / "trainable.safetensors")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(final))
    base = AutoModelForCausalLM.from_pretrained(base_path)
    x = torch.tensor([[1, 40, 50, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        a = trained.eval()(x).logits
        b = reloaded.eval()(x).logits
        c = base.eval()(x).logits
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(b, c, atol=1e-3)  # the adapter changed the model


def test_qlora_still_learns_after_an_eval_pass(tmp_path):
    import torch

    from hpcft.train import data as D
    from trainers.causal_lm import build_model, token_loss

    cfg = make_cfg(tmp_path, "method=qlora")
    model, tok, _ = build_model(cfg, Ctx(tmp_path))
    import bitsandbytes as bnb

    q = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert q and all(m.support_avx512bf16_for_cpu is False for m in q)  # bitsandbytes' CPU repack is off (it stops LoRA gradients)
    split = D.load_split(cfg.data.train, cfg.data.format, tok, 64)
    batch = D.collate(split.samples[:8], tok.pad_token_id)

    def loss_now():
        with torch.no_grad():
            return float(token_loss(model(input_ids=batch["input_ids"],
                                          attention_mask=batch["attention_mask"]).logits, batch["labels"])[0])

    # an evaluation pass first: eval mode + no_grad 4-bit forwards (what repacks the weights)
    model.eval()
    before = loss_now()
    model.train()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(lora, lr=1e-2)
    grad_norms = []
    for _ in range(8):
        loss, _ = token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                             batch["labels"])
        loss.backward()
        grad_norms.append(float(torch.norm(torch.stack([p.grad.norm() for p in lora if p.grad is not None]))))
        opt.step()
        opt.zero_grad()
    model.eval()
    after = loss_now()
    assert all(g > 0 for g in grad_norms)
    assert after < before - 0.05


def test_qlora_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    # 256 samples / batch 32 = 8 steps per epoch; 2 epochs: eval after epoch 1, then training goes on
    cfg = make_cfg(out, "method=qlora", "training.batch_size=32", "training.epochs=2",
                   "training.learning_rate=1e-2", "training.sequence_length=48")
    summary, _ = train(cfg)
    assert summary["final_step"] == 16
    lines = metrics(out, "train")
    evals = metrics(out, "eval")
    assert [e["epoch"] for e in evals if e["split"] == "validation"] == [1, 2]
    assert evals[2]["loss"] < evals[0]["loss"]  # validation improved in the epoch that followed an eval
    assert lines[-1]["loss"] < lines[8]["loss"]
    assert (out / "final" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("method, data", [("pretrain", "tiny_text"), ("full", "tiny_sft")])
def test_pretrain_and_full_run_and_save_hf_model(tmp_path, method, data):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    seq = "32" if method == "pretrain" else "64"  # tiny_text lines are longer than 32 bytes: truncated
    cfg = make_cfg(out, f"method={method}", f"data={data}", "training.max_steps=20", "training.learning_rate=3e-3",
                   f"training.sequence_length={seq}", "training.weight_decay=0.01", "training.log_interval=2")
    summary, ctx = train(cfg)
    losses = [r["loss"] for r in metrics(out, "train")]
    assert len(losses) == 10  # every 2nd step
    assert losses[-1] < losses[0] - 0.3
    data_lines = {r["split"]: r for r in metrics(out, "data")}
    assert set(data_lines) == {"train", "validation", "test"}
    if method == "pretrain":
        assert data_lines["train"]["truncated"] == data_lines["train"]["samples"] == 256
        assert any(k == "truncated" for k, _, _ in ctx.events)
    else:
        assert data_lines["train"]["truncated"] == 0
        assert not any(k == "truncated" for k, _, _ in ctx.events)
    final = out / "final"
    m = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("The plum dog", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(m(ids).logits).all()
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"])
    assert not torch.equal(base.model.embed_tokens.weight, m.model.embed_tokens.weight)


def _run_entry(cfg_path, env_extra=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def test_resume_after_kill_matches_uninterrupted_run(tmp_path):
    import torch
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from hpcft.train.checkpoint import latest_checkpoint

    # 8 steps per epoch, 12 steps: crosses an epoch boundary (with its eval); checkpoints every 3 steps
    common = ["method=lora", "training.batch_size=32", "training.sequence_length=48", "training.max_steps=12",
              "training.learning_rate=1e-2", "training.save_strategy=steps", "training.save_interval=3",
              "training.keep_checkpoints=2", "training.log_sample_ids=true"]
    a = tmp_path / "a"
    summary_a, _ = train(make_cfg(a, *common))
    assert summary_a["final_step"] == 12

    b = tmp_path / "b"
    cfg_b = make_cfg(b, *common)
    b.mkdir()
    (b / "config.yaml").write_text(OmegaConf.to_yaml(cfg_b))
    killed = _run_entry(b / "config.yaml", {"HPCFT_TEST_CRASH_AT_STEP": "10"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert latest_checkpoint(b / "checkpoints").name == "step-00000009"
    assert len(list((b / "checkpoints").glob("step-*"))) == 2  # keep_checkpoints=2
    assert not (b / "final").exists()

    cfg_b.training.resume_from = "latest"
    (b / "config.yaml").write_text(OmegaConf.to_yaml(cfg_b))
    resumed = _run_entry(b / "config.yaml")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout
    summary_b = json.loads((b / "summary.json").read_text())
    assert summary_b["final_step"] == summary_a["final_step"] == 12
    assert summary_b["steps_this_run"] == 3

    # the samples each step saw: the resumed run re-ran step 10 only (killed after it, before a checkpoint)
    lines_b = metrics(b, "train")
    assert [r["step"] for r in lines_b] == list(range(1, 11)) + [10, 11, 12]
    seen_b = {r["step"]: r["samples"] for r in lines_b}  # later lines (after the resume) win
    seen_a = {r["step"]: r["samples"] for r in metrics(a, "train")}
    assert seen_b == seen_a
    for epoch_steps in (range(1, 9), range(9, 13)):
        ids = [i for s in epoch_steps for i in seen_b[s]]
        assert len(ids) == len(set(ids)), "a sample was seen twice in one epoch"
    # same optimizer/scheduler/RNG state: same weights and losses as the uninterrupted run
    wa = load_file(str(a / "final" / "adapter_model.safetensors"))
    wb = load_file(str(b / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k
    assert abs(summary_a["final_train_loss"] - summary_b["final_train_loss"]) < 1e-4


def test_entry_exit_codes_tell_bad_input_from_other_failures(tmp_path, capsys):
    """Malformed data exits 2 (BAD_INPUT: `hpcft retry` never retries it), in one line without a traceback; any
    other failure exits 1 with its traceback."""
    from omegaconf import OmegaConf

    from hpcft import exitcodes
    from hpcft.train.entry import main

    cfg = make_cfg(tmp_path / "run", "method=lora")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    cfg.data.train = str(bad)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert main(["--config", str(tmp_path / "config.yaml")]) == exitcodes.BAD_INPUT == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1: missing field 'response'" in err and "Traceback" not in err

    cfg2 = make_cfg(tmp_path / "run2", "method=lora", "model.source=pretrained", f"model.path={tmp_path}/no-model",
                    f"model.tokenizer={tmp_path}/no-model")
    (tmp_path / "config2.yaml").write_text(OmegaConf.to_yaml(cfg2))
    assert main(["--config", str(tmp_path / "config2.yaml")]) == exitcodes.FAILED == 1
    assert "Traceback" in capsys.readouterr().err


def _signal_after(seconds):
    import signal
    import threading

    t = threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGUSR1))
    t.start()
    return t


@pytest.fixture
def restore_sigusr1():
    import signal

    before = signal.getsignal(signal.SIGUSR1)
    yield
    signal.signal(signal.SIGUSR1, before)


def test_warning_signal_saves_stops_and_the_rerun_loses_no_step(tmp_path, monkeypatch, restore_sigusr1):
    """SIGUSR1 (the time-limit warning) mid-run: a checkpoint at the next step boundary, SavedAtWarning (exit 75 in
    entry.py), no final/; the rerun continues from that very step: every step trained exactly once."""
    from hpcft.train.checkpoint import latest_checkpoint, read_state
    from hpcft.train.signals import SavedAtWarning

    monkeypatch.setenv("HPCFT_TEST_STEP_DELAY_S", "0.1")
    out = tmp_path / "run"
    cfg = make_cfg(out, "method=lora", "training.max_steps=40", "training.save_strategy=steps",
                   "training.save_interval=100")
    timer = _signal_after(3.0)
    with pytest.raises(SavedAtWarning) as e:
        train(cfg)
    timer.cancel()
    stopped = e.value.step
    assert 0 < stopped < 40
    d = latest_checkpoint(out / "checkpoints")
    assert read_state(d)["step"] == stopped and read_state(d)["reason"] == "warning"
    assert not (out / "final").exists() and not (out / "summary.json").exists()
    monkeypatch.delenv("HPCFT_TEST_STEP_DELAY_S")
    summary, _ = train(make_cfg(out, "method=lora", "training.max_steps=40", "training.save_strategy=steps",
                                "training.save_interval=100"))
    assert summary["final_step"] == 40 and summary["resumed_from"] == str(d)
    assert [r["step"] for r in metrics(out, "train")] == list(range(1, 41))


def test_warning_with_checkpoints_off_trains_on(tmp_path, monkeypatch, restore_sigusr1):
    """Nothing to save: stopping would only lose the work, so the run goes on (and may finish within the grace)."""
    monkeypatch.setenv("HPCFT_TEST_STEP_DELAY_S", "0.05")
    out = tmp_path / "run"
    timer = _signal_after(2.0)
    summary, _ = train(make_cfg(out, "method=lora", "training.max_steps=60", "training.keep_checkpoints=off"))
    timer.cancel()
    assert summary["final_step"] == 60 and not (out / "checkpoints").exists()
