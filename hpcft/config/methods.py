"""Every training method hpcft knows and the rules its config must satisfy beyond types, checked at submit.

`METHOD_SPECS` (at the end) names, for every method, its schema dataclass (`hpcft.config.schema`), its trainer
module, the data formats it trains on and one rule function from this module. `hpcft.jobs.preflight.validate` runs
the common rules, then `check_method` (the method's data format, then its rule function). A rule raises
ConfigError with one line: `key=value: problem; fix`.

Light on purpose: no torch (the schema is plain dataclasses), so `hpcft --help` stays fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from hpcft.config.schema import (DPOMethodConfig, GRPOMethodConfig, MethodConfig, PREFERENCE_FORMATS, SFT_FORMATS,
                                 RewardMethodConfig, T2ILoraMethodConfig)
from hpcft.errors import ConfigError

DIFFUSION_TYPES = ("stable_diffusion",)
REWARD_FUNCTIONS = ("length", "contains", "format_regex", "char_fraction", "reward_model")  # hpcft.train.rewards
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_pair", "apo_zero", "apo_down", "discopop", "sft")


def check(ok: bool, key: str, value: object, problem: str, fix: str) -> None:
    """Raise ConfigError(`key=value: problem; fix`) unless ok."""
    if not ok:
        raise ConfigError(f"{key}={value}: {problem}; {fix}")


def at_least(node: Any, prefix: str, key: str, least: float, example: object) -> None:
    """The commonest rule: `prefix.key` >= least, else `prefix.key=value: must be >= least; e.g. prefix.key=example`."""
    value = getattr(node, key)
    check(value >= least, f"{prefix}.{key}", value, f"must be >= {least}", f"e.g. {prefix}.{key}={example}")


def check_method(cfg: Any) -> None:
    """The method's own checks: known name, data format it trains on, then its rule function."""
    name = cfg.method.name
    spec = METHOD_SPECS.get(name)
    check(spec is not None, "method.name", name, "unknown method", "choose one of: " + ", ".join(METHOD_SPECS))
    accepted = ("auto",) + tuple(spec.formats)
    check(cfg.data.format in accepted, "data.format", cfg.data.format, f"method={name} cannot train on it",
          "use data.format=" + "|".join(accepted))
    spec.rules(cfg)


# ------------------------------------------------------------------------------------------------ shared pieces

def world_size(cfg: Any) -> int:
    """Processes of the job: resources.nodes * resources.tasks_per_node."""
    return int(cfg.resources.nodes) * int(cfg.resources.tasks_per_node)


def model_type(cfg: Any) -> Any:
    return (cfg.model.get("arch") or {}).get("model_type")


def language_model(cfg: Any) -> None:
    """The method trains a language model, not a diffusion model."""
    check(model_type(cfg) not in DIFFUSION_TYPES, "model.arch.model_type", model_type(cfg),
          f"method={cfg.method.name} trains a language model", "use a language model, e.g. model=tiny")


def lora_settings(cfg: Any, required: bool) -> None:
    """method.lora: present when required, and in range whenever present."""
    m = cfg.method
    lc = m.get("lora")
    if lc is None:
        check(not required, "method.lora", None, f"method={m.name} needs LoRA settings",
              f"use method={m.name} (its preset has them) or set method.lora.rank=8")
        return
    at_least(lc, "method.lora", "rank", 1, 8)
    check(lc.alpha > 0, "method.lora.alpha", lc.alpha, "must be > 0", "e.g. method.lora.alpha=16")
    check(0 <= lc.dropout < 1, "method.lora.dropout", lc.dropout, "must be in [0, 1)",
          "e.g. method.lora.dropout=0.05")
    check(len(lc.target_modules) > 0, "method.lora.target_modules", list(lc.target_modules),
          "must name at least one module", "e.g. method.lora.target_modules=[q_proj,v_proj]")


# ------------------------------------------------------------------------------------ one rule function a method

def pretrain_rules(cfg: Any) -> None:
    language_model(cfg)
    lora_settings(cfg, required=False)


def full_rules(cfg: Any) -> None:
    language_model(cfg)
    lora_settings(cfg, required=False)


def lora_rules(cfg: Any) -> None:
    language_model(cfg)
    lora_settings(cfg, required=True)


def qlora_rules(cfg: Any) -> None:
    lora_rules(cfg)
    q = cfg.method.get("quantization")
    check(q is not None, "method.quantization", None, "qlora needs quantization settings", "use method=qlora")
    check(q.bits == 4, "method.quantization.bits", q.bits, "QLoRA is 4-bit", "set method.quantization.bits=4")
    check(q.quant_type in ("nf4", "fp4"), "method.quantization.quant_type", q.quant_type, "unknown 4-bit type",
          "use method.quantization.quant_type=nf4|fp4")
    check(q.compute_dtype in ("float32", "bfloat16", "float16"), "method.quantization.compute_dtype",
          q.compute_dtype, "unknown dtype", "use float32|bfloat16|float16")
    # the 4-bit base is placed on one device by bitsandbytes: neither DeepSpeed nor data parallelism wraps it
    stage = cfg.deepspeed.get("stage")
    check(stage is None, "deepspeed.stage", stage, "method=qlora trains one process without DeepSpeed",
          "use deepspeed=none (or method=lora for ZeRO)")
    n = world_size(cfg)
    check(n == 1, "resources.tasks_per_node" if cfg.resources.tasks_per_node > 1 else "resources.nodes",
          cfg.resources.tasks_per_node if cfg.resources.tasks_per_node > 1 else cfg.resources.nodes,
          f"method=qlora trains in one process, this asks for {n} (resources.nodes * resources.tasks_per_node)",
          "use resources.nodes=1 resources.tasks_per_node=1 (or method=lora for several processes)")


def reward_rules(cfg: Any) -> None:
    """method=reward (all weights) and method=reward_lora (the same method with method.lora set)."""
    language_model(cfg)
    lora_settings(cfg, required=False)


def dpo_rules(cfg: Any) -> None:
    m = cfg.method
    language_model(cfg)
    lora_settings(cfg, required=False)  # method.lora=null: full-weight DPO with a frozen reference copy
    check(m.beta > 0, "method.beta", m.beta, "must be > 0", "e.g. method.beta=0.1")
    for lt in str(m.loss_type).split(","):
        check(lt.strip() in DPO_LOSSES, "method.loss_type", m.loss_type, "unknown DPO loss",
              "use one of " + "|".join(DPO_LOSSES))


def grpo_rules(cfg: Any) -> None:
    m, t = cfg.method, cfg.training
    language_model(cfg)
    lora_settings(cfg, required=False)
    check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "e.g. method.beta=0.04 (0: no reference model)")
    check(m.num_generations >= 2, "method.num_generations", m.num_generations,
          "GRPO compares a group of >= 2 completions", "e.g. method.num_generations=4")
    g = t.batch_size * t.gradient_accumulation
    check(g % m.num_generations == 0, "training.batch_size", t.batch_size,
          f"batch_size*gradient_accumulation ({g}) must be a multiple of method.num_generations "
          f"({m.num_generations})", f"e.g. training.batch_size={m.num_generations * 2}")
    at_least(m, "method", "max_completion_length", 1, 64)
    check(m.temperature > 0, "method.temperature", m.temperature, "must be > 0", "e.g. method.temperature=1.0")
    check(len(m.reward_functions) > 0, "method.reward_functions", list(m.reward_functions),
          "needs at least one reward function", "e.g. method.reward_functions=[length]")
    for spec in m.reward_functions:
        parse_reward_spec(str(spec))  # ConfigError for unknown names / bad arguments
    if "reward_model" in [str(s).split(":", 1)[0] for s in m.reward_functions]:
        check(bool(m.get("reward_model")), "method.reward_model", None,
              "the reward_model reward function needs a model trained by method=reward",
              "set method.reward_model=/path/to/run/final or job:ID")


def t2i_lora_rules(cfg: Any) -> None:
    m = cfg.method
    check(model_type(cfg) in DIFFUSION_TYPES, "model.arch.model_type", model_type(cfg),
          "t2i_lora trains a diffusion model", "use model=tiny_sd or model=sd15")
    lora_settings(cfg, required=True)
    check(m.resolution >= 8 and m.resolution % 8 == 0, "method.resolution", m.resolution,
          "must be a positive multiple of 8", "e.g. method.resolution=512")
    at_least(m, "method", "num_sample_images", 0, 2)
    at_least(m, "method", "num_inference_steps", 1, 20)
    at_least(m, "method", "noise_offset", 0, 0.05)
    stage = cfg.deepspeed.get("stage")
    check(stage is None, "deepspeed.stage", stage,
          "t2i_lora trains only the UNet's LoRA adapters with torch DDP, not DeepSpeed",
          "use deepspeed=none (several processes, resources.nodes * resources.tasks_per_node > 1, "
          "still train data-parallel)")


def parse_reward_spec(spec: str) -> Tuple[str, Optional[str]]:
    """("name", argument or None); ConfigError for an unknown name or a bad argument."""
    name, _, arg = spec.partition(":")
    name = name.strip()
    key = "method.reward_functions"
    if name not in REWARD_FUNCTIONS:
        raise ConfigError(f"{key}: unknown reward function '{spec}'; choose from length[:N], contains:<word>, "
                          "format_regex:<re>, char_fraction:<chars>, reward_model")
    if name == "length" and arg and not (arg.isdigit() and int(arg) >= 1):
        raise ConfigError(f"{key}: '{spec}': the target length must be a positive integer, e.g. length:20")
    if name in ("contains", "format_regex", "char_fraction") and not arg:
        raise ConfigError(f"{key}: '{spec}' needs an argument, e.g. {name}:yes")
    if name == "format_regex":
        try:
            re.compile(arg)
        except re.error as e:
            raise ConfigError(f"{key}: '{spec}': invalid regular expression ({e})") from None
    return name, (arg or None)


# ----------------------------------------------------------------------------------------- every method, in one place

@dataclass(frozen=True)
class Method:
    """Everything hpcft knows about one training method (`method.name`), in one place."""

    name: str
    schema: type  # the dataclass of the `method` group (conf/method/*.yaml extend it)
    trainer: str  # the module under trainers/ that runs it (hpcft.train.entry imports it)
    formats: Tuple[str, ...]  # the DATA_FORMATS it trains on (besides auto)
    rules: Callable[[Any], None]  # hpcft.config.methods.*_rules: ConfigError at submit, before anything is created


# Every training method hpcft knows. `method=reward_lora` is method.name=reward with method.lora set.
METHOD_SPECS: Dict[str, Method] = {m.name: m for m in (
    Method("pretrain", MethodConfig, "trainers.causal_lm", ("text",), pretrain_rules),
    Method("full", MethodConfig, "trainers.causal_lm", ("text",) + SFT_FORMATS, full_rules),
    Method("lora", MethodConfig, "trainers.causal_lm", ("text",) + SFT_FORMATS, lora_rules),
    Method("qlora", MethodConfig, "trainers.causal_lm", ("text",) + SFT_FORMATS, qlora_rules),
    Method("reward", RewardMethodConfig, "trainers.reward", PREFERENCE_FORMATS, reward_rules),
    Method("dpo", DPOMethodConfig, "trainers.dpo", PREFERENCE_FORMATS, dpo_rules),
    Method("grpo", GRPOMethodConfig, "trainers.grpo", ("prompt", "prompt_response") + PREFERENCE_FORMATS,
           grpo_rules),
    Method("t2i_lora", T2ILoraMethodConfig, "trainers.text_to_image", ("image_caption",), t2i_lora_rules),
)}
# method name -> trainer module (what hpcft.train.entry and `hpcft submit --dry-run` need)
METHODS: Dict[str, str] = {name: m.trainer for name, m in METHOD_SPECS.items()}
