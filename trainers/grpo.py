"""method=grpo: group relative policy optimisation with trl's GRPOTrainer on {"prompt"} data.

For every prompt the policy samples method.num_generations completions; each is scored by the reward functions
named in method.reward_functions (hpcft/train/rewards.py: length, contains:<w>, format_regex:<re>,
char_fraction:<chars>, reward_model with method.reward_model = the final/ directory of a method=reward run), and
the policy moves toward the completions that score above their group's mean. method.beta > 0 adds a KL penalty to
the reference (the base model, reloaded from its path; with LoRA the adapter-disabled model).
"""

from __future__ import annotations

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def _prompt_records(path: str, data_cfg, role: str):
    from hpcft.train.preference_data import load_prompts

    return load_prompts(path, data_cfg, role)  # the prompts of prompt, prompt_response and preference records


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    from hpcft.train.lora import lora_config
    from hpcft.train.modeling import torch_dtype
    from hpcft.train.rewards import build_rewards
    from trainers import _trl_common as C

    # setup
    m = cfg.method
    out, base, tok, train_ds, evals = C.prepare(cfg, ctx, lambda p, role: _prompt_records(p, cfg.data, role))
    tok.padding_side = "left"  # generation
    funcs, procs = build_rewards(list(m.reward_functions), m.get("reward_model"), torch_dtype(cfg.model.dtype))
    args = C.trl_args(
        GRPOConfig, cfg, ctx, has_eval=bool(evals),
        beta=m.beta,
        num_generations=m.num_generations,
        max_completion_length=m.max_completion_length,
        temperature=m.temperature,
        model_init_kwargs=C.model_init_kwargs(cfg),
        log_completions=False,
    )
    run = C.TrlRun(cfg, ctx, list(evals), base)
    trainer = GRPOTrainer(
        model=base,  # a path: with beta > 0 trl loads the reference model from it too
        reward_funcs=funcs,
        args=args,
        train_dataset=train_ds,
        eval_dataset=evals or None,
        processing_class=tok,
        reward_processing_classes=procs,
        callbacks=run.callbacks,
        peft_config=lora_config(m, "CAUSAL_LM"),
    )
    run.attach(trainer)

    # train
    run.train(trainer)

    # save
    final = run.save_final(trainer, tok)
    return run.finish(trainer, final, {"lora": m.get("lora") is not None,
                                       "reward_functions": list(m.reward_functions)})
