"""method=dpo: direct preference optimisation with trl's DPOTrainer on {"prompt","chosen","rejected"} pairs.

LoRA (method.lora set, the default preset): only adapters train; the reference is the same model with the
adapters disabled (no second copy). Full weights (method.lora=null): the reference is a frozen copy loaded from
the base path (pitfall 6: trl reloads it from a path, so config-built models are materialized under base/ first).
Validation and test: DPO loss, reward margins and accuracy after each epoch.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    started = time.time()
    import torch
    from trl import DPOConfig, DPOTrainer

    from hpcft.train.method_checks import check_method
    from hpcft.train.modeling import base_model_path, load_tokenizer, torch_dtype
    from hpcft.train.preference_data import load_preference
    from trainers import _trl_common as C

    check_method(cfg)
    out = Path(cfg.output_dir)
    torch.manual_seed(cfg.training.seed)
    base = base_model_path(cfg.model, out, seed=cfg.training.seed, is_main=ctx.is_main)
    tok = load_tokenizer(cfg.model, base)
    train_ds = C.to_dataset(load_preference(cfg.data.train))
    evals = C.eval_datasets(cfg, load_preference)
    args = C.trl_args(
        DPOConfig, cfg, ctx, has_eval=bool(evals),
        beta=cfg.method.beta,
        loss_type=[s.strip() for s in str(cfg.method.loss_type).split(",")],
        max_length=cfg.training.sequence_length,
        model_init_kwargs={"dtype": torch_dtype(cfg.model.dtype),
                           "trust_remote_code": bool(cfg.model.get("trust_remote_code"))},
    )
    log = C.MetricsLog(out, ctx.is_main)
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
