"""method=dpo: direct preference optimisation with trl's DPOTrainer on {"prompt","chosen","rejected"} pairs.

LoRA (method.lora set, the default preset): only adapters train; the reference is the same model with the
adapters disabled (no second copy). Full weights (method.lora=null): the reference is a frozen copy loaded from
the base path (pitfall 6: trl reloads it from a path, so config-built models are materialized under base/ first).
Validation and test: DPO loss, reward margins and accuracy after each epoch.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    started = time.time()
    from trl import DPOConfig, DPOTrainer

    from hpcft.train.preference_data import load_preference
    from trainers import _trl_common as C

    out, base, tok, train_ds, evals = C.prepare(cfg, ctx, load_preference)
    args = C.trl_args(
        DPOConfig, cfg, ctx, has_eval=bool(evals),
        beta=cfg.method.beta,
        loss_type=[s.strip() for s in str(cfg.method.loss_type).split(",")],
        max_length=cfg.training.sequence_length,
        model_init_kwargs=C.model_init_kwargs(cfg),
    )
    log = C.MetricsWriter(out / "metrics.jsonl", enabled=ctx.is_main)
    cb = C.make_callback(ctx, log, list(evals), "dpo")
    trainer = DPOTrainer(
        model=base,  # a path: the policy, and (full weights) the reference, are loaded from it
        args=args,
        train_dataset=train_ds,
        eval_dataset=evals or None,
        processing_class=tok,
        callbacks=[cb],
        peft_config=C.peft_lora(cfg.method, "CAUSAL_LM"),
    )
    C.quiet(trainer)
    trainer.train(resume_from_checkpoint=C.resume_checkpoint(cfg))
    final = C.save_final(trainer, tok, out, ctx)
    return C.finish(cfg, ctx, trainer, cb, final, started, {"lora": cfg.method.get("lora") is not None})
