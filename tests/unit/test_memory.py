"""Will it fit? hpcft.config.memory's per-GPU estimate: parameter counts against transformers' own models, the ZeRO
arithmetic, the refusal of a job that cannot fit (through the CLI: nothing created), GPU defaults (precision auto,
gradient checkpointing, attention), the DeepSeek presets, and the estimate against the measured peak of real CPU
training runs of every LM method (benchmarks/bench_memory.py) and the H200 figures of BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import hpcft.jobs.preflight
from hpcft.config import memory as M
from hpcft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
from support import hpcft_cli  # noqa: E402

GIB = 2**30
REFUSED_8B = ["model=llama3_8b", "method=full", "resources=gpu_1x", "resources.gpu_mem=24", "executor=local"]


# ------------------------------------------------------------------------------------------- parameter counts

TINY_DEEPSEEK = dict(model_type="deepseek_v3", hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                     num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
                     n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1, q_lora_rank=24,
                     kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=8, vocab_size=300,
                     tie_word_embeddings=False)
ARCHS = {
    "llama3_8b": M.KNOWN_ARCHS["llama3-8b"],
    "qwen2_5_7b": M.KNOWN_ARCHS["qwen2.5-7b"],
    "deepseek_v3": M.KNOWN_ARCHS["deepseek-v3"],
    "tiny_deepseek": TINY_DEEPSEEK,
    "tied_qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, vocab_size=500, tie_word_embeddings=True),
}


@pytest.mark.parametrize("name", list(ARCHS))
def test_parameter_counts_equal_the_transformers_model(name):
    """The pure counter against the real model class, instantiated on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = dict(ARCHS[name])
    hf = AutoConfig.for_model(conf.pop("model_type"), **conf)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    arch = M.arch_from_config(ARCHS[name])
    assert arch.params == sum(p.numel() for p in model.parameters())
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert arch.block_linear == linear  # what bitsandbytes quantizes for QLoRA
    if name == "deepseek_v3":
        assert 670e9 < arch.params < 672e9


def test_lora_parameters_equal_peft():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    conf = dict(ARCHS["tied_qwen2"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(conf.pop("model_type"), **conf))
    targets = ("q_proj", "v_proj", "down_proj")
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=list(targets)))
    n, _ = M.lora_params(M.arch_from_config(ARCHS["tied_qwen2"]), targets, 4)
    assert n == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_the_tiny_model_is_counted_from_its_arch_and_the_byte_tokenizer():
    cfg = hpcft.jobs.preflight.load(["+experiment=lora_tiny"])
    est, source = M.estimate_cfg(cfg)
    assert source == "model.arch" and est.arch.vocab == M.BYTE_TOKENIZER_VOCAB
    # 2 layers x rank 8 x (in + out) of q (64->64), k and v (64->32: 2 KV heads), o (64->64)
    assert est.trainable == 2 * 8 * ((64 + 64) + (64 + 32) * 2 + (64 + 64))


def test_a_local_model_directory_is_read_from_its_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(ARCHS["qwen2_5_7b"]))
    cfg = hpcft.jobs.preflight.load(["model=qwen2_5_7b", f"model.path={tmp_path}"])
    arch, source = M.model_arch(cfg.model)
    assert source == f"{tmp_path}/config.json" and arch.params == M.arch_from_config(ARCHS["qwen2_5_7b"]).params
    none, why = M.model_arch(hpcft.jobs.preflight.load(["model=qwen2_5_7b", f"model.path={tmp_path}/x", "model.name=x"]).model)
    assert none is None and "no config.json" in why
    adapter = tmp_path / "final"  # a LoRA run's final/ (model.path=job:ID): the estimate is its base's
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    arch2, source2 = M.model_arch(hpcft.jobs.preflight.load(["model=qwen2_5_7b", f"model.path={adapter}"]).model)
    assert arch2 == arch and source2 == f"the adapter's base, {tmp_path}/config.json"


# ----------------------------------------------------------------------------------------------- the formula

def _job(**kw) -> M.Job:
    base = dict(method="full", weight_dtype="bfloat16", precision="bf16", gpus_per_node=8, tasks_per_node=8,
                batch_size=1, seq_len=1024)
    return M.Job(**{**base, **kw})


def test_zero_stages_divide_model_states_as_in_the_zero_paper():
    """ZeRO (Rajbhandari et al.): per GPU 2P weights + 2P gradients + 12P optimizer (mixed-precision Adam); stage 1
    divides the optimizer by N, stage 2 also the gradients, stage 3 also the weights."""
    arch = M.arch_from_config(ARCHS["llama3_8b"])
    P, N = arch.params, 8
    e0, e1, e2, e3 = (M.estimate(arch, _job(zero_stage=s)) for s in (0, 1, 2, 3))
    assert (e0.weights, e0.gradients, e0.optimizer) == (2 * P, 2 * P, 12 * P)
    assert (e1.weights, e1.gradients, e1.optimizer) == (2 * P, 2 * P, 12 * P / N)
    assert (e2.weights, e2.gradients, e2.optimizer) == (2 * P, 2 * P / N, 12 * P / N)
    gathered = (max(arch.max_layer, arch.embed, arch.head) + M.ZERO3_PREFETCH) * 2
    assert (e3.weights, e3.gradients, e3.optimizer) == (2 * P / N + gathered, 2 * P / N, 12 * P / N)
    assert e0.activations == e3.activations and e0.logits == e3.logits  # data parallel: per-GPU batch unchanged
    off = M.estimate(arch, _job(zero_stage=3, offload_params=True, offload_optimizer=True))
    assert off.optimizer == 0 and off.weights == gathered and off.total < e3.total


def test_activations_scale_with_tokens_and_shrink_with_checkpointing_lora_and_qlora():
    arch = M.arch_from_config(ARCHS["llama3_8b"])
    one = M.estimate(arch, _job(gpus_per_node=1, tasks_per_node=1))
    four = M.estimate(arch, _job(gpus_per_node=1, tasks_per_node=1, batch_size=2, seq_len=2048))
    assert four.activations == pytest.approx(4 * one.activations) and four.logits == pytest.approx(4 * one.logits)
    gc = M.estimate(arch, _job(gpus_per_node=1, tasks_per_node=1, gradient_checkpointing=True))
    assert gc.activations < one.activations / 5
    lora = replace(_job(gpus_per_node=1, tasks_per_node=1), lora_rank=16, lora_targets=("q_proj", "v_proj"))
    el, eq = M.estimate(arch, lora), M.estimate(arch, replace(lora, quantized=True, compute_dtype="bfloat16"))
    assert el.trainable == 16 * 32 * (4096 + 4096 + 4096 + 1024)
    assert el.gradients == el.trainable * 4 and el.optimizer == el.trainable * 8  # fp32 adapters, two moments
    assert el.activations < one.activations  # frozen linears keep no inputs for weight gradients
    assert eq.weights < el.weights / 2  # NF4 base (peft casts embeddings, head and norms to fp32)


def test_precision_auto_is_bf16_on_gpus_and_fp32_on_cpu(tmp_path):
    from hpcft.train.deepspeed_config import build_ds_config

    gpu = hpcft.jobs.preflight.load(["resources=gpu_8x", "deepspeed=zero2"])
    cpu = hpcft.jobs.preflight.load([])
    assert (gpu.training.precision, cpu.training.precision) == ("bf16", "fp32")  # resolved at submit, stored
    assert hpcft.jobs.preflight.load(["resources=gpu_1x", "training.precision=fp32"]).training.precision == "fp32"
    assert build_ds_config(gpu.deepspeed, gpu.training, 8)["bf16"]["enabled"] is True
    assert M.job_of(gpu).precision == "bf16"
    with pytest.raises(ConfigError, match="training.precision=fp64: unknown precision"):
        hpcft.jobs.preflight.load(["training.precision=fp64"])


def test_gpu_memory_and_attention_are_validated():
    with pytest.raises(ConfigError, match="resources.gpu_mem=-1"):
        hpcft.jobs.preflight.load(["resources.gpu_mem=-1"])
    with pytest.raises(ConfigError, match="model.attn_implementation=flash: unknown attention"):
        hpcft.jobs.preflight.load(["model.attn_implementation=flash"])


def test_attention_defaults_to_sdpa_without_a_gpu_and_keeps_a_chosen_one():
    from omegaconf import OmegaConf

    from hpcft.train.modeling import attn_implementation

    assert attn_implementation(OmegaConf.create({"attn_implementation": None, "dtype": "bfloat16"}), "bf16") == "sdpa"
    assert attn_implementation(OmegaConf.create({"attn_implementation": "eager"}), "bf16") == "eager"


def test_trl_trainers_get_gradient_checkpointing_and_attention_from_the_config(tmp_path):
    from trl import RewardConfig

    from hpcft.train.context import RunContext
    from trainers._trl_common import model_init_kwargs, trl_args

    cfg = hpcft.jobs.preflight.load(["+experiment=reward_tiny", "training.gradient_checkpointing=true",
                             f"output_dir={tmp_path}"])
    args = trl_args(RewardConfig, cfg, RunContext(output_dir=tmp_path), has_eval=False)
    assert args.gradient_checkpointing and args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert model_init_kwargs(cfg)["attn_implementation"] == "sdpa"
    off = trl_args(RewardConfig, hpcft.jobs.preflight.load(["+experiment=reward_tiny", f"output_dir={tmp_path}"]),
                   RunContext(output_dir=tmp_path), has_eval=False)
    assert off.gradient_checkpointing is False  # trl's own default is True


# ------------------------------------------------------------------------------------------- will it fit? CLI

def _cli(*args, home):
    env = dict(os.environ, HPCFT_HOME=str(home), HF_HUB_OFFLINE="1")
    env.pop("HPCFT_DB_URL", None)
    return subprocess.run([*hpcft_cli(), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_an_8b_full_fine_tune_on_one_24gb_gpu_is_refused_with_what_fits(hpcft_home):
    p = _cli("submit", *REFUSED_8B, home=hpcft_home)
    assert p.returncode == 2, p.stderr
    err = [x for x in p.stderr.splitlines() if x.startswith("error:")]
    assert len(err) == 1, p.stderr  # one line: what is needed, what is asked, the smallest changes that fit
    line = err[0]
    needs = float(line.split("needs ~")[1].split(" GiB")[0])
    assert 60 < needs < 140, line
    assert "asked 1x24 GiB" in line and "fits with " in line and "--force" in line
    assert "deepspeed=zero3_offload" in line and "method=lora" in line and "gpus_per_node=8" in line
    # nothing was created: no ledger row, no run directory
    assert not (hpcft_home / "runs").exists() or not any((hpcft_home / "runs").iterdir())
    from hpcft.ledger.store import Ledger

    assert Ledger().search(limit=10) == []

    # every suggested change really fits (estimated)
    cfg = hpcft.jobs.preflight.load(REFUSED_8B)
    est, _ = M.estimate_cfg(cfg)
    assert M.refusal(est) and not est.fits()
    for change in (["deepspeed=zero3_offload"], ["method=lora", "training.gradient_checkpointing=true"],
                   ["deepspeed=zero3", "resources.gpus_per_node=8", "resources.tasks_per_node=8",
                    "training.gradient_checkpointing=true"]):
        assert M.estimate_cfg(hpcft.jobs.preflight.load(REFUSED_8B + change))[0].fits(), change


def test_dry_run_prints_the_estimate_and_refuses_unless_forced(hpcft_home):
    p = _cli("submit", "--dry-run", *REFUSED_8B, home=hpcft_home)
    assert p.returncode == 2 and "memory: ~" in p.stdout and "per GPU (1 GPU)" in p.stdout
    assert "weights 15.0 GiB" in p.stdout  # 8.03B bf16 parameters
    assert "error: memory: needs ~" in p.stderr
    forced = _cli("submit", "--dry-run", "--force", *REFUSED_8B, home=hpcft_home)
    assert forced.returncode == 0, forced.stderr
    assert "warning: memory: needs ~" in forced.stdout and "--force: submitting anyway" in forced.stdout


def _submit_lines(overrides, force=False, show=True):
    """What `hpcft submit` prints about memory (hpcft.config.memory.check_submit, as the CLI calls it)."""
    lines = []
    cfg = hpcft.jobs.preflight.load(overrides)
    M.check_submit([cfg], [overrides], force, lines.append, show)
    return lines


def test_what_submit_prints_when_a_job_fits_or_runs_on_cpu():
    fits = _submit_lines(["model=llama3_8b", "method=qlora", "resources=gpu_1x"])
    assert fits[0].startswith("memory: ~") and "fits: needs ~" in fits[-1] and "of 80 GiB per GPU" in fits[-1]
    assert _submit_lines(["model=llama3_8b", "method=qlora", "resources=gpu_1x"], show=False) == fits[:1]
    unknown = _submit_lines(["model=llama3_8b", "method=qlora", "resources=gpu_1x", "resources.gpu_mem=null"])
    assert "set resources.gpu_mem=GiB" in unknown[-1]
    cpu = _submit_lines(["+experiment=lora_tiny"])
    assert "per process (CPU)" in cpu[0] and _submit_lines(["+experiment=lora_tiny"], show=False) == []
    assert _submit_lines(["+experiment=t2i_lora_tiny"]) == ["memory: not estimated (method=t2i_lora is not "
                                                              "estimated)"]
    sweep = [hpcft.jobs.preflight.load(["+experiment=lora_tiny"]), hpcft.jobs.preflight.load(REFUSED_8B)]
    with pytest.raises(ConfigError, match=r"^point 1 \(b\): memory: needs"):
        M.check_submit(sweep, [["a"], ["b"]], False, lambda _: None, False)


# ------------------------------------------------------------------------------------------ DeepSeek presets

@pytest.mark.parametrize("name,params,gpus", [("deepseek_r1_distill_qwen_7b_32k", 7.6e9, 8),
                                               ("deepseek_v3_lora_32k", 671e9, 128)])
def test_deepseek_presets_carry_32k_context_zero3_and_the_gpus_they_need(name, params, gpus):
    cfg = hpcft.jobs.preflight.load([f"+experiment={name}", "training.kernels=none"])  # Liger: test_kernels.py
    assert cfg.training.sequence_length == 32768 and cfg.deepspeed.stage == 3 and cfg.training.gradient_checkpointing
    assert cfg.training.precision == "bf16"
    est, _ = M.estimate_cfg(cfg)
    assert est.params == pytest.approx(params, rel=0.01) and est.job.gpus == gpus
    assert est.fits() is True  # on the GPUs the preset asks for
    if name.startswith("deepseek_v3"):  # half the nodes: refused, and told what fits
        small = M.estimate_cfg(hpcft.jobs.preflight.load([f"+experiment={name}", "resources.nodes=8",
                                                          "training.kernels=none"]))[0]
        assert small.fits() is False and "resources.nodes=16" in M.refusal(small)
    else:  # 80 GB GPUs: the 32K logits alone are ~65 GiB per GPU
        small = M.estimate_cfg(hpcft.jobs.preflight.load([f"+experiment={name}", "resources.gpu_mem=80",
                                                          "training.kernels=none"]))[0]
        assert small.fits() is False and "training.sequence_length=16384" in M.refusal(small)


# ------------------------------------------------------------------------------- estimate vs measured peaks

# H200 peaks (torch.cuda.max_memory_allocated) measured by benchmarks/bench_gpu.py, BENCHMARKS.md (2026-11-30):
# the ~0.47B random-init Llama, batch 8 x 1024 tokens, bf16 autocast, LoRA/QLoRA rank 16, full under ZeRO-2.
H200_PEAK_GIB = {"lora": 17.15, "qlora": 19.79, "full_zero2": 21.51}


@pytest.mark.parametrize("case", list(H200_PEAK_GIB))
def test_estimate_within_25_percent_of_the_h200_benchmark(case, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_memory as B

    data = B.write_data(tmp_path, 1024, 256)
    cfg = hpcft.jobs.preflight.load(B.case_overrides(case, B.SIZES["gpu"], data, 30, True,
                                             ["method.lora.rank=16"] if "lora" in case else []))
    est, _ = M.estimate_cfg(cfg)
    assert est.total / GIB == pytest.approx(H200_PEAK_GIB[case], rel=0.25)
