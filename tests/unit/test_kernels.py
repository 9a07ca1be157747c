"""training.kernels: the rules (submit refuses `liger` in one line where it cannot apply), what `auto` resolves to,
the memory estimate without the logits under Liger's fused cross-entropy (the DeepSeek presets), and the wiring in
the trainer core: which of Liger's patch functions are called, with which kernels (a fake liger_kernel module), and
which transformers functions the real package replaces (it installs on CPU; its Triton kernels never run here)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import hpcft.jobs.preflight
from hpcft.config import kernels as K
from hpcft.config import memory as M
from hpcft.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
GPU = ["resources.gpus_per_node=1"]
GIB = 2**30


@pytest.fixture
def installed(monkeypatch):
    """liger-kernel counts as installed whatever this machine has."""
    monkeypatch.setattr(K, "liger_installed", lambda: True)


@pytest.fixture
def absent(monkeypatch):
    """liger-kernel counts as not installed: find_spec finds no module."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "liger_kernel" else real(name, *a))


def load(*ov):
    return hpcft.jobs.preflight.load(list(ov))


# ------------------------------------------------------------------------------------------------ the rules

@pytest.mark.parametrize("ov,why", [
    ([], "this job has no GPU (resources.gpus_per_node=0)"),
    (GPU + ["model.arch.model_type=gpt2"], "Liger has no kernels for model_type gpt2"),
])
def test_liger_refused_in_one_line_where_it_cannot_apply(installed, ov, why):
    with pytest.raises(ConfigError) as e:
        load("+experiment=lora_tiny", "training.kernels=liger", *ov)
    msg = str(e.value)
    assert msg.startswith("training.kernels=liger: ") and why in msg and msg.endswith("use training.kernels=auto|none")
    assert "\n" not in msg


def test_liger_refused_for_a_method_it_does_not_cover(installed):
    with pytest.raises(ConfigError, match=r"^training.kernels=liger: method=t2i_lora has no Liger kernels"):
        load("+experiment=t2i_lora_tiny", "training.kernels=liger", *GPU)


def test_liger_refused_when_not_installed(absent):
    assert not K.liger_installed()
    with pytest.raises(ConfigError, match=r"liger-kernel is not installed \(pip install 'hpcft\[kernels\]'\)"):
        load("+experiment=lora_tiny", "training.kernels=liger", *GPU)


def test_unknown_kernels_refused():
    with pytest.raises(ConfigError, match=r"^training.kernels=fast: unknown kernels; use auto\|liger\|none$"):
        load("+experiment=lora_tiny", "training.kernels=fast")


@pytest.mark.parametrize("exp", ["lora_tiny", "qlora_tiny", "pretrain_tiny", "dpo_tiny", "grpo_tiny", "reward_tiny"])
def test_liger_accepted_on_a_gpu_job_of_a_covered_method(installed, exp):
    assert load(f"+experiment={exp}", "training.kernels=liger", *GPU).training.kernels == "liger"


def test_auto_is_liger_only_with_a_gpu_and_the_package():
    assert K.resolve("auto", "lora", 1, "llama", True) == "liger"
    assert K.resolve("auto", "lora", 0, "llama", True) == "none"  # CPU job
    assert K.resolve("auto", "lora", 1, "llama", False) == "none"  # not installed
    assert K.resolve("auto", "lora", 1, "gpt2", True) == "none"  # architecture not covered
    assert K.resolve("auto", "t2i_lora", 1, None, True) == "none"
    assert K.resolve("none", "lora", 8, "llama", True) == "none"
    assert load("+experiment=lora_tiny").training.kernels == "auto"  # the default


# ------------------------------------------------------------------------------------------- the estimate

def _est(*ov):
    est, _ = M.estimate_cfg(load(*ov))
    return est


def test_fused_cross_entropy_removes_the_logits_of_the_deepseek_presets(installed):
    v3 = "+experiment=deepseek_v3_lora_32k"
    none, liger, auto = _est(v3, "training.kernels=none"), _est(v3, "training.kernels=liger"), _est(v3)
    assert none.job.kernels == "none" and liger.job.kernels == "liger" and auto.total == liger.total
    assert none.logits / GIB == pytest.approx(55.2, abs=0.1)  # the figure
    assert liger.logits < 1.0 * GIB and liger.logits > 0  # one chunk of logits + the hidden states' gradient
    assert liger.activations == none.activations and liger.weights == none.weights
    assert none.total - liger.total > 54 * GIB
    assert "Liger fused linear cross-entropy: no logits held" in liger.notes


def test_fits_with_names_liger_for_the_presets_on_80_gb_gpus(installed):
    for exp, seq in (("deepseek_r1_distill_qwen_7b_32k", 16384), ("deepseek_v3_lora_32k", 8192)):
        none = _est(f"+experiment={exp}", "training.kernels=none", "resources.gpu_mem=80")
        msg = M.refusal(none)
        assert f"fits with training.kernels=liger, or training.sequence_length={seq}" in msg
        assert _est(f"+experiment={exp}", "training.kernels=liger", "resources.gpu_mem=80").fits() is True


def test_deepseek_v3_on_half_the_nodes_fits_with_liger(installed):
    none = _est("+experiment=deepseek_v3_lora_32k", "resources.nodes=8", "training.kernels=none")
    assert none.fits() is False and "fits with training.kernels=liger, or deepspeed=zero3_offload" in M.refusal(none)
    assert _est("+experiment=deepseek_v3_lora_32k", "resources.nodes=8", "training.kernels=liger").fits() is True


def test_the_full_fine_tuning_estimate_keeps_the_lm_heads_gradient(installed):
    est = _est("+experiment=deepseek_r1_distill_qwen_7b_32k", "training.kernels=liger")
    head_grad = est.arch.vocab * est.arch.hidden * 4
    assert est.logits > head_grad and est.logits < head_grad + 1 * GIB


def test_cpu_jobs_and_trl_methods_keep_their_logits(installed):
    assert _est("+experiment=lora_tiny").job.kernels == "none"  # auto on a CPU job
    dpo_liger, dpo_none = _est("+experiment=dpo_tiny", *GPU), _est("+experiment=dpo_tiny", *GPU, "training.kernels=none")
    assert dpo_liger.job.kernels == "liger" and dpo_liger.logits == dpo_none.logits > 0  # trl: layer kernels only


# ------------------------------------------------------------------------------------- the trainer core

class FakeLiger:
    """liger_kernel.transformers with the patch functions of two architectures, recording their calls."""

    def __init__(self, monkeypatch):
        self.calls = []
        mod = types.ModuleType("liger_kernel.transformers")

        def apply_liger_kernel_to_llama(rope=True, cross_entropy=False, fused_linear_cross_entropy=True,
                                        rms_norm=True, swiglu=True, model=None):
            self.calls.append(("llama", dict(rope=rope, cross_entropy=cross_entropy, rms_norm=rms_norm,
                                             swiglu=swiglu, fused_linear_cross_entropy=fused_linear_cross_entropy)))

        def apply_liger_kernel_to_gemma(rope=True, cross_entropy=False, fused_linear_cross_entropy=True,
                                        rms_norm=True, geglu=True, model=None):
            self.calls.append(("gemma", dict(rope=rope, geglu=geglu, rms_norm=rms_norm,
                                             fused_linear_cross_entropy=fused_linear_cross_entropy)))

        mod.apply_liger_kernel_to_llama = apply_liger_kernel_to_llama
        mod.apply_liger_kernel_to_gemma = apply_liger_kernel_to_gemma
        pkg = types.ModuleType("liger_kernel")
        pkg.transformers = mod
        monkeypatch.setitem(sys.modules, "liger_kernel", pkg)
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers", mod)
        monkeypatch.setattr(K, "liger_installed", lambda: True)


def model_dir(tmp_path, model_type):
    d = tmp_path / model_type
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    return str(d)


def test_setup_patches_the_architecture_with_all_four_kernels(monkeypatch, tmp_path):
    from hpcft.train import kernels

    fake = FakeLiger(monkeypatch)
    logged = []
    cfg = load("+experiment=lora_tiny", "training.kernels=liger", *GPU)
    assert kernels.setup(cfg, model_dir(tmp_path, "llama"), log=logged.append, gpus=1) is True  # the loss is fused
    assert fake.calls == [("llama", dict(rope=True, cross_entropy=False, rms_norm=True, swiglu=True,
                                         fused_linear_cross_entropy=True))]
    assert logged == ["[hpcft] kernels: liger (rope, rms_norm, swiglu, fused_linear_cross_entropy) for llama"]
    assert kernels.setup(cfg, model_dir(tmp_path, "gemma"), gpus=1) is True
    assert fake.calls[-1] == ("gemma", dict(rope=True, geglu=True, rms_norm=True, fused_linear_cross_entropy=True))


def test_setup_patches_nothing_without_a_gpu_or_with_kernels_none(monkeypatch, tmp_path):
    from hpcft.train import kernels

    fake = FakeLiger(monkeypatch)
    auto = load("+experiment=lora_tiny", *GPU)
    assert kernels.setup(auto, model_dir(tmp_path, "llama"), gpus=0) is False  # auto, and this process has no GPU
    assert kernels.setup(load("+experiment=lora_tiny", "training.kernels=none", *GPU),
                         str(tmp_path / "llama"), gpus=1) is False
    assert fake.calls == []
    assert kernels.setup(auto, str(tmp_path / "llama"), gpus=1) is True and len(fake.calls) == 1  # auto + GPU
    with pytest.raises(ConfigError, match=r"^training.kernels=liger: Liger's kernels are Triton GPU kernels"):
        kernels.setup(load("+experiment=lora_tiny", "training.kernels=liger", *GPU), str(tmp_path / "llama"), gpus=0)


def test_an_installed_liger_without_the_architecture_is_refused(monkeypatch, tmp_path):
    from hpcft.train import kernels

    FakeLiger(monkeypatch)  # has llama and gemma, not mistral
    cfg = load("+experiment=lora_tiny", "training.kernels=liger", *GPU)
    with pytest.raises(ConfigError, match=r"^training.kernels=liger: the installed liger-kernel has no kernels for "
                                          r"model_type mistral; use training.kernels=none$"):
        kernels.setup(cfg, model_dir(tmp_path, "mistral"), gpus=1)


def test_trl_methods_get_the_layer_kernels_through_their_own_flag(monkeypatch, tmp_path):
    from hpcft.train import kernels

    fake = FakeLiger(monkeypatch)
    d = model_dir(tmp_path, "llama")
    assert kernels.trl_flag(load("+experiment=dpo_tiny", *GPU), d, gpus=1) is True
    assert kernels.trl_flag(load("+experiment=dpo_tiny", *GPU), d, gpus=0) is False
    assert fake.calls == []  # trl applies them itself
    fn = sys.modules["liger_kernel.transformers"].apply_liger_kernel_to_llama
    assert kernels.liger_kwargs(fn, "dpo")["fused_linear_cross_entropy"] is False
    assert kernels.liger_kwargs(fn, "qlora")["fused_linear_cross_entropy"] is True


def test_trl_args_sets_use_liger_kernel(monkeypatch, tmp_path):
    from trl import DPOConfig

    import trainers._trl_common as T
    from hpcft.train import kernels

    monkeypatch.setattr(T, "device_has_gpu", lambda: False)  # trl's config refuses bf16 etc. without one
    for gpus, want in ((1, True), (0, False)):
        monkeypatch.setattr(kernels, "gpu_count", lambda g=gpus: g)
        FakeLiger(monkeypatch)
        cfg = load("+experiment=dpo_tiny", *GPU, "training.precision=fp32")
        cfg.output_dir = str(tmp_path)
        args = T.trl_args(DPOConfig, cfg, types.SimpleNamespace(world_size=1), has_eval=False)
        assert args.use_liger_kernel is want


# ------------------------------------------------------------------------------------- the real package

def test_every_covered_architecture_is_one_liger_patches():
    pytest.importorskip("liger_kernel")
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    for mt in K.LIGER_ARCHS:
        assert MODEL_TYPE_TO_APPLY_LIGER_FN[mt].__name__ == f"apply_liger_kernel_to_{mt}"


def test_the_real_liger_replaces_llamas_norm_mlp_rope_and_loss():
    """In a child process (the patch is global): which transformers functions Liger replaced."""
    pytest.importorskip("liger_kernel")
    code = """
import json
from transformers.models.llama import modeling_llama as m
before = {k: getattr(m, k) for k in ("LlamaRMSNorm", "LlamaMLP", "apply_rotary_pos_emb")}
fwd = m.LlamaForCausalLM.forward
from hpcft.train.kernels import apply_liger
asked = apply_liger("llama", "lora")
out = {k: getattr(m, k).__module__ + "." + getattr(m, k).__name__ for k in before if getattr(m, k) is not before[k]}
out["forward"] = m.LlamaForCausalLM.forward.__module__ if m.LlamaForCausalLM.forward is not fwd else None
print(json.dumps({"asked": asked, "patched": out}))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["asked"]["fused_linear_cross_entropy"] is True and res["asked"]["cross_entropy"] is False
    assert res["patched"] == {"LlamaRMSNorm": "liger_kernel.transformers.rms_norm.LigerRMSNorm",
                              "LlamaMLP": "liger_kernel.transformers.swiglu.LigerSwiGLUMLP",
                              "apply_rotary_pos_emb": "liger_kernel.transformers.rope.liger_rotary_pos_emb",
                              "forward": "liger_kernel.transformers.model.llama"}


def test_liger_asked_for_a_model_whose_type_cannot_be_read_is_refused(monkeypatch, tmp_path):
    from hpcft.train import kernels

    fake = FakeLiger(monkeypatch)
    monkeypatch.setattr(kernels, "model_type_of", lambda path: None)
    with pytest.raises(ConfigError, match=r"^training.kernels=liger: cannot read the model_type of /nowhere; "):
        kernels.setup(load("+experiment=lora_tiny", "training.kernels=liger", *GPU), "/nowhere", gpus=1)
    assert kernels.setup(load("+experiment=lora_tiny", *GPU), "/nowhere", gpus=1) is False  # auto: off
    assert fake.calls == []
