"""Validation of the preference / RL / text-to-image method settings (what types cannot express).

`check_method(cfg)` raises ConfigError naming the key and the fix; it is cheap (no torch) so hpcft.config.validate
can call it before a job is submitted. The trainers call it too.
"""

from __future__ import annotations

from typing import Any

from hpcft.errors import ConfigError

LM_DATA_FORMATS = {
    "reward": ("auto", "preference"),
    "dpo": ("auto", "preference"),
    "grpo": ("auto", "prompt", "prompt_response", "preference"),
    "t2i_lora": ("auto", "image_caption"),
}
DIFFUSION_TYPES = ("stable_diffusion",)


def _check(ok: bool, key: str, value: object, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value}: {problem}; {fix}")


def check_method(cfg: Any) -> None:
    m, d, mo = cfg.method, cfg.data, cfg.model
    name = m.name
    if name not in LM_DATA_FORMATS:
        return
    _check(d.format in LM_DATA_FORMATS[name], "data.format", d.format, f"method={name} cannot train on it",
           "use data.format=" + "|".join(LM_DATA_FORMATS[name]))
    is_diffusion = (mo.get("arch") or {}).get("model_type") in DIFFUSION_TYPES
    if name == "t2i_lora":
        _check(is_diffusion, "model.arch.model_type", (mo.get("arch") or {}).get("model_type"),
               "t2i_lora trains a diffusion model", "use model=tiny_sd or model=sd15")
        _check(m.get("lora") is not None, "method.lora", None, "t2i_lora needs LoRA settings", "use method=t2i_lora")
        _check(m.resolution >= 8 and m.resolution % 8 == 0, "method.resolution", m.resolution,
               "must be a positive multiple of 8", "e.g. method.resolution=512")
        _check(m.num_sample_images >= 0, "method.num_sample_images", m.num_sample_images, "must be >= 0",
               "e.g. method.num_sample_images=2")
        _check(m.num_inference_steps >= 1, "method.num_inference_steps", m.num_inference_steps, "must be >= 1",
               "e.g. method.num_inference_steps=20")
        _check(m.noise_offset >= 0, "method.noise_offset", m.noise_offset, "must be >= 0", "e.g. 0.05")
        stage = (cfg.get("deepspeed") or {}).get("stage")
        _check(stage is None, "deepspeed.stage", stage,
               "t2i_lora trains only the UNet's LoRA adapters with torch DDP, not DeepSpeed",
               "use deepspeed=none (several processes, resources.nodes * resources.tasks_per_node > 1, "
               "still train data-parallel)")
        return
    _check(not is_diffusion, "model", mo.name, f"method={name} trains a language model",
           "use a language model, e.g. model=tiny")
    if name == "dpo":
        _check(m.beta > 0, "method.beta", m.beta, "must be > 0", "e.g. method.beta=0.1")
        known = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                 "aot_pair", "apo_zero", "apo_down", "discopop", "sft")
        for lt in str(m.loss_type).split(","):
            _check(lt.strip() in known, "method.loss_type", m.loss_type, "unknown DPO loss",
                   "use one of " + "|".join(known))
    if name == "grpo":
        from hpcft.train.rewards import parse_reward_spec

        _check(m.beta >= 0, "method.beta", m.beta, "must be >= 0", "e.g. method.beta=0.04 (0: no reference model)")
        _check(m.num_generations >= 2, "method.num_generations", m.num_generations,
               "GRPO compares a group of >= 2 completions", "e.g. method.num_generations=4")
        g = cfg.training.batch_size * cfg.training.gradient_accumulation
        _check(g % m.num_generations == 0, "training.batch_size", cfg.training.batch_size,
               f"batch_size*gradient_accumulation ({g}) must be a multiple of method.num_generations "
               f"({m.num_generations})", f"e.g. training.batch_size={m.num_generations * 2}")
        _check(m.max_completion_length >= 1, "method.max_completion_length", m.max_completion_length,
               "must be >= 1", "e.g. method.max_completion_length=64")
        _check(m.temperature > 0, "method.temperature", m.temperature, "must be > 0", "e.g. method.temperature=1.0")
        _check(len(m.reward_functions) > 0, "method.reward_functions", list(m.reward_functions),
               "needs at least one reward function", "e.g. method.reward_functions=[length]")
        for spec in m.reward_functions:
            parse_reward_spec(str(spec))  # raises ConfigError for unknown names / bad arguments
        if "reward_model" in [str(s).split(":", 1)[0] for s in m.reward_functions]:
            _check(bool(m.get("reward_model")), "method.reward_model", None,
                   "the reward_model reward function needs a model trained by method=reward",
                   "set method.reward_model=/path/to/run/final")
