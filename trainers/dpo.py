"""method=dpo: direct preference optimisation with trl's DPOTrainer on {"prompt","chosen","rejected"} pairs.

LoRA (method.lora set, the default preset): only adapters train; the reference is the same model with the
adapters disabled (no second copy). Full weights (method.lora=null): the reference is a frozen copy loaded from
the base path (trl loads the reference from a path, so config-built models are materialized under base/ first).
Validation and test: DPO loss, reward margins and accuracy after each epoch.
"""

from __future__ import annotations

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    from trl import DPOConfig, DPOTrainer

    from hpcft.train.lora import lora_config
    from hpcft.train.preference_data import load_preference
    from trainers import _trl_common as C

    # setup
    out, base, tok, train_ds, evals = C.prepare(cfg, ctx, lambda path, role: load_preference(path, cfg.data, role))
    args = C.trl_args(
        DPOConfig, cfg, ctx, has_eval=bool(evals),
        beta=cfg.method.beta,
        loss_type=[s.strip() for s in str(cfg.method.loss_type).split(",")],
        max_length=cfg.training.sequence_length,
        model_init_kwargs=C.model_init_kwargs(cfg),
    )
    run = C.TrlRun(cfg, ctx, list(evals), base)
    trainer = DPOTrainer(
        model=base,  # a path: the policy, and (full weights) the reference, are loaded from it
        args=args,
        train_dataset=train_ds,
        eval_dataset=evals or None,
        processing_class=tok,
        callbacks=run.callbacks,
        peft_config=lora_config(cfg.method, "CAUSAL_LM"),
    )
    run.attach(trainer)

    # train
    run.train(trainer)

    # save
    final = run.save_final(trainer, tok)
    return run.finish(trainer, final, {"lora": cfg.method.get("lora") is not None})
