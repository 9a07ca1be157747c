"""Every validation rule, one by one: the common rules (hpcft.config.compose) and each method's (hpcft.config.methods, named by
hpcft.config.methods.METHOD_SPECS). Configs are composed once per method and then changed in memory, so each case is a
unit test of one rule; tests/unit/test_cli.py proves the same refusals through the real `hpcft submit`."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpcft import paths
from hpcft.config import compose
from hpcft.jobs import preflight
from hpcft.config import methods
from hpcft.config import schema
from hpcft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ONE_LINE = re.compile(r"^[\w.]+=[^\n]*: [^\n]+; [^\n]+$")  # key=value: problem; fix

BASES = {  # overrides that give a valid config of each method
    "lora": [],
    "pretrain": ["method=pretrain", "data=tiny_text"],
    "full": ["method=full"],
    "qlora": ["method=qlora"],
    "reward": ["method=reward", "data=tiny_pref"],
    "reward_lora": ["method=reward_lora", "data=tiny_pref"],
    "dpo": ["method=dpo", "data=tiny_pref"],
    "grpo": ["method=grpo", "data=tiny_prompts"],
    "t2i_lora": ["model=tiny_sd", "method=t2i_lora", "data=tiny_images"],
}
_COMPOSED: dict = {}


def base(name: str):
    """A fresh, valid config of method `name` (composed once, copied per test)."""
    if name not in _COMPOSED:
        _COMPOSED[name] = preflight.validate(compose.compose(BASES[name]))
    return copy.deepcopy(_COMPOSED[name])


def refused(cfg, startswith: str) -> str:
    with pytest.raises(ConfigError) as e:
        preflight.validate(cfg)
    msg = str(e.value)
    assert ONE_LINE.match(msg), msg
    assert msg.startswith(startswith), msg
    return msg


def with_values(name: str, values: dict):
    cfg = base(name)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


# ----------------------------------------------------------------------------------------------- the registry

def test_every_method_has_one_spec_with_schema_trainer_formats_and_rules():
    assert set(methods.METHOD_SPECS) == {"pretrain", "full", "lora", "qlora", "reward", "dpo", "grpo", "t2i_lora"}
    for name, spec in methods.METHOD_SPECS.items():
        assert spec.name == name and methods.METHODS[name] == spec.trainer
        assert (ROOT / (spec.trainer.replace(".", "/") + ".py")).is_file(), spec.trainer
        assert spec.formats and set(spec.formats) <= set(schema.DATA_FORMATS) - {"auto"}, spec.formats
        assert spec.rules.__module__ == "hpcft.config.methods" and callable(spec.rules)
        assert issubclass(spec.schema, schema.MethodConfig)


@pytest.mark.parametrize("option", sorted(BASES))
def test_each_method_option_uses_its_specs_schema(option):
    cfg = base(option)
    spec = methods.METHOD_SPECS[cfg.method.name]
    assert OmegaConf.get_type(cfg.method) is spec.schema
    if option == "reward_lora":  # reward_lora = method reward with adapters
        assert cfg.method.name == "reward" and cfg.method.lora is not None


def test_one_format_table():
    # every format a method accepts is in the one table, and the data files shipped for it are accepted
    assert set(schema.DATA_FORMATS) == {"auto", "text", "prompt_response", "alpaca", "messages", "sharegpt",
                                        "preference", "sharegpt_preference", "prompt", "image_caption"}
    assert not hasattr(compose, "CAUSAL_FORMATS") and not hasattr(methods, "LM_DATA_FORMATS")


# ----------------------------------------------------------------------------------------------- common rules

COMMON = [
    ({"executor": "cloud"}, "executor=cloud: unknown executor"),
    ({"name": " "}, "name= : must not be empty"),
    ({"model.source": "web"}, "model.source=web: unknown source"),
    ({"model.dtype": "int8"}, "model.dtype=int8: unknown dtype"),
    ({"training.epochs": 0}, "training.epochs=0: must be >= 1"),
    ({"training.max_steps": 0}, "training.max_steps=0"),
    ({"training.learning_rate": -1.0}, "training.learning_rate=-1.0: must be > 0; e.g. training.learning_rate=2e-4"),
    ({"training.batch_size": 0}, "training.batch_size=0"),
    ({"training.gradient_accumulation": 0}, "training.gradient_accumulation=0"),
    ({"training.sequence_length": 0}, "training.sequence_length=0"),
    ({"training.warmup_ratio": 1.0}, "training.warmup_ratio=1.0"),
    ({"training.lr_decay_ratio": 1.5}, "training.lr_decay_ratio=1.5"),
    ({"training.weight_decay": -0.1}, "training.weight_decay=-0.1"),
    ({"training.max_grad_norm": -1.0}, "training.max_grad_norm=-1.0"),
    ({"training.precision": "fp8"}, "training.precision=fp8"),
    ({"training.save_strategy": "hourly"}, "training.save_strategy=hourly"),
    ({"training.save_interval": 0}, "training.save_interval=0"),
    ({"training.keep_checkpoints": "-2"}, "training.keep_checkpoints=-2"),
    ({"training.resume_from": "/no/such/checkpoint"}, "training.resume_from=/no/such/checkpoint"),
    ({"data.format": "csv"}, "data.format=csv: unknown format"),
    ({"data.train": "/does/not/exist.jsonl"}, "data.train=/does/not/exist.jsonl: file not found"),
    ({"data.validation": "/does/not/exist.jsonl"}, "data.validation=/does/not/exist.jsonl: file not found"),
    ({"data.test": "/does/not/exist.jsonl"}, "data.test=/does/not/exist.jsonl: file not found"),
    ({"deepspeed.stage": 4}, "deepspeed.stage=4: unknown ZeRO stage"),
    ({"resources.nodes": 0}, "resources.nodes=0"),
    ({"resources.gpus_per_node": -1}, "resources.gpus_per_node=-1"),
    ({"resources.tasks_per_node": 0}, "resources.tasks_per_node=0"),
    ({"resources.cpus_per_task": 0}, "resources.cpus_per_task=0"),
    ({"resources.time": "soon"}, "resources.time=soon: not a Slurm time limit"),
    ({"resources.priority": "urgent"}, "resources.priority=urgent"),
    ({"resources.gpu_directive": "gpus"}, "resources.gpu_directive=gpus"),
    ({"resources.signal_grace": -1}, "resources.signal_grace=-1: must be >= 0"),
    ({"resources.time": "00:01:00", "resources.signal_grace": 120},
     "resources.signal_grace=120: must be shorter than resources.time=00:01:00 (60 s); "
     "e.g. resources.signal_grace=30"),
    ({"resources.time": "2", "resources.signal_grace": 120},
     "resources.signal_grace=120: must be shorter than resources.time=2 (120 s)"),
    ({"resources.on_timeout": "retry"}, "resources.on_timeout=retry: unknown action; use resources.on_timeout=expire|requeue"),
    ({"resources.max_requeues": -1}, "resources.max_requeues=-1: must be >= 0"),
]


@pytest.mark.parametrize("values,message", COMMON, ids=lambda x: ",".join(x) if isinstance(x, dict) else None)
def test_common_rule(values, message):
    refused(with_values("lora", values), message)


@pytest.mark.parametrize("values", [
    {"resources.signal_grace": 0, "resources.time": "0:08"},  # 0: no warning, any limit
    {"resources.time": "0:08"},  # unset: 120 s capped at half the limit
    {"resources.signal_grace": 59, "resources.time": "1"},
    {"resources.on_timeout": "requeue", "resources.max_requeues": 0},
    {"deepspeed.stage": 0},
])
def test_common_rules_accept(values):
    preflight.validate(with_values("lora", values))


# ----------------------------------------------------------------------------------------------- method rules

METHOD_RULES = [
    # data formats (the one table, each method's accepted subset)
    ("pretrain", {"data.format": "prompt_response"}, "data.format=prompt_response: method=pretrain cannot train"),
    ("lora", {"data.format": "preference"}, "data.format=preference: method=lora cannot train on it; "
                                            "use data.format=auto|text|prompt_response|alpaca|messages"),
    ("reward", {"data.format": "text"}, "data.format=text: method=reward cannot train"),
    ("dpo", {"data.format": "prompt_response"}, "data.format=prompt_response: method=dpo cannot train"),
    ("grpo", {"data.format": "image_caption"}, "data.format=image_caption: method=grpo cannot train"),
    ("t2i_lora", {"data.format": "text"}, "data.format=text: method=t2i_lora cannot train"),
    # LoRA settings
    ("lora", {"method.lora": None}, "method.lora=None: method=lora needs LoRA settings"),
    ("lora", {"method.lora.rank": 0}, "method.lora.rank=0"),
    ("lora", {"method.lora.alpha": 0}, "method.lora.alpha=0"),
    ("lora", {"method.lora.dropout": 1.0}, "method.lora.dropout=1.0"),
    ("lora", {"method.lora.target_modules": []}, "method.lora.target_modules=[]"),
    ("reward_lora", {"method.lora.rank": 0}, "method.lora.rank=0"),
    ("dpo", {"method.lora.dropout": -0.5}, "method.lora.dropout=-0.5"),
    # language model vs diffusion model
    ("lora", {"model.arch.model_type": "stable_diffusion"},
     "model.arch.model_type=stable_diffusion: method=lora trains a language model"),
    ("pretrain", {"model.arch.model_type": "stable_diffusion"}, "model.arch.model_type=stable_diffusion"),
    ("reward", {"model.arch.model_type": "stable_diffusion"}, "model.arch.model_type=stable_diffusion"),
    ("t2i_lora", {"model.arch.model_type": "llama"}, "model.arch.model_type=llama: t2i_lora trains a diffusion"),
    # qlora: what the trainer used to refuse only inside the job, after the queue wait
    ("qlora", {"deepspeed.stage": 2}, "deepspeed.stage=2: method=qlora trains one process without DeepSpeed; "
                                      "use deepspeed=none"),
    ("qlora", {"deepspeed.stage": 0}, "deepspeed.stage=0: method=qlora"),
    ("qlora", {"resources.tasks_per_node": 2}, "resources.tasks_per_node=2: method=qlora trains in one process, "
                                               "this asks for 2"),
    ("qlora", {"resources.nodes": 2}, "resources.nodes=2: method=qlora trains in one process, this asks for 2"),
    ("qlora", {"resources.nodes": 2, "resources.tasks_per_node": 4}, "resources.tasks_per_node=4: "
                                                                     "method=qlora trains in one process, "
                                                                     "this asks for 8"),
    ("qlora", {"method.quantization": None}, "method.quantization=None: qlora needs quantization settings"),
    ("qlora", {"method.quantization.bits": 8}, "method.quantization.bits=8: QLoRA is 4-bit"),
    ("qlora", {"method.quantization.quant_type": "int4"}, "method.quantization.quant_type=int4"),
    ("qlora", {"method.quantization.compute_dtype": "fp8"}, "method.quantization.compute_dtype=fp8"),
    ("qlora", {"method.lora.rank": 0}, "method.lora.rank=0"),
    # dpo
    ("dpo", {"method.beta": 0.0}, "method.beta=0.0: must be > 0"),
    ("dpo", {"method.loss_type": "sigmoid,nope"}, "method.loss_type=sigmoid,nope: unknown DPO loss"),
    # grpo
    ("grpo", {"method.beta": -0.1}, "method.beta=-0.1"),
    ("grpo", {"method.num_generations": 1}, "method.num_generations=1"),
    ("grpo", {"training.batch_size": 6}, "training.batch_size=6: batch_size*gradient_accumulation (6) must be a "
                                         "multiple of method.num_generations (4)"),
    ("grpo", {"method.max_completion_length": 0}, "method.max_completion_length=0"),
    ("grpo", {"method.temperature": 0.0}, "method.temperature=0.0"),
    ("grpo", {"method.reward_functions": []}, "method.reward_functions=[]"),
    ("grpo", {"method.reward_functions": ["reward_model"]}, "method.reward_model=None"),
    # t2i_lora
    ("t2i_lora", {"method.lora": None}, "method.lora=None: method=t2i_lora needs LoRA settings"),
    ("t2i_lora", {"method.resolution": 30}, "method.resolution=30"),
    ("t2i_lora", {"method.num_sample_images": -1}, "method.num_sample_images=-1"),
    ("t2i_lora", {"method.num_inference_steps": 0}, "method.num_inference_steps=0"),
    ("t2i_lora", {"method.noise_offset": -1.0}, "method.noise_offset=-1.0"),
    ("t2i_lora", {"deepspeed.stage": 2}, "deepspeed.stage=2: t2i_lora trains only the UNet's LoRA adapters"),
]


@pytest.mark.parametrize("method,values,message", METHOD_RULES,
                         ids=[f"{m}-{','.join(v)}" for m, v, _ in METHOD_RULES])
def test_method_rule(method, values, message):
    refused(with_values(method, values), message)


@pytest.mark.parametrize("method,values", [
    ("qlora", {}),  # one process, no DeepSpeed
    ("lora", {"deepspeed.stage": 2, "resources.tasks_per_node": 2}),
    ("full", {"deepspeed.stage": 3, "resources.nodes": 2}),
    ("dpo", {"method.lora": None}),  # full-weight DPO
    ("grpo", {"data.format": "preference", **{f"data.{k}": paths.asset(f"data/tiny_pref/{k}.jsonl")
                                              for k in ("train", "validation", "test")}}),
    ("t2i_lora", {"resources.nodes": 2, "resources.tasks_per_node": 2}),  # DDP
    ("pretrain", {"data.format": "auto"}),
])
def test_method_rules_accept(method, values):
    preflight.validate(with_values(method, values))


def test_grpo_reward_spec_errors_are_config_errors():
    with pytest.raises(ConfigError, match="unknown reward function"):
        preflight.validate(with_values("grpo", {"method.reward_functions": ["bogus"]}))


def test_an_unknown_method_name_is_refused():
    cfg = base("lora")
    cfg.method.name = "sft"
    refused(cfg, "method.name=sft: unknown method; choose one of: pretrain, full, lora, qlora")


def test_common_rules_run_before_the_methods():
    # both wrong: the common rule speaks first
    cfg = with_values("qlora", {"deepspeed.stage": 2, "training.epochs": 0})
    refused(cfg, "training.epochs=0")


def test_validation_imports_no_torch():
    code = ("import sys\nfrom hpcft.config import compose\nfrom hpcft.jobs import preflight\n"
            "preflight.validate(compose.compose(['method=grpo', 'data=tiny_prompts']))\n"
            "preflight.validate(compose.compose(['model=tiny_sd', 'method=t2i_lora', 'data=tiny_images']))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'transformers', 'peft', 'trl', 'diffusers', 'deepspeed', 'bitsandbytes')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ), cwd=paths.conf_dir().parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
