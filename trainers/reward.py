"""method=reward: a reward model (sequence classifier, 1 score) trained with trl's RewardTrainer on
{"prompt","chosen","rejected"} pairs. Pairwise accuracy (score(chosen) > score(rejected)) on validation and test
after each epoch. method.lora set: LoRA adapters + a trained score head (peft), else all weights.

final/ holds the HF model (or the peft adapter) + tokenizer; method=grpo loads it with method.reward_model.
"""

from __future__ import annotations

import time

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    started = time.time()
    from trl import RewardConfig, RewardTrainer

    from hpcft.train.preference_data import load_preference
    from trainers import _trl_common as C

    out, base, tok, train_ds, evals = C.prepare(cfg, ctx, load_preference)
    args = C.trl_args(
        RewardConfig, cfg, ctx, has_eval=bool(evals),
        max_length=cfg.training.sequence_length,
        center_rewards_coefficient=cfg.method.get("center_rewards_coefficient"),
        model_init_kwargs=C.model_init_kwargs(cfg),
        disable_dropout=True,
    )
    log = C.MetricsWriter(out / "metrics.jsonl", enabled=ctx.is_main)
    cb = C.make_callback(ctx, log, list(evals), "reward")
    trainer = RewardTrainer(
        model=base,  # a path: trl loads AutoModelForSequenceClassification(num_labels=1)
        args=args,
        train_dataset=train_ds,
        eval_dataset=evals or None,
        processing_class=tok,
        callbacks=[cb],
        peft_config=C.peft_lora(cfg.method, "SEQ_CLS"),  # SEQ_CLS keeps the score head trainable and saved
    )
    C.quiet(trainer)
    if trainer.model.config.pad_token_id is None:
        trainer.model.config.pad_token_id = tok.pad_token_id
    trainer.train(resume_from_checkpoint=C.resume_checkpoint(cfg))
    final = C.save_final(trainer, tok, out, ctx)
    return C.finish(cfg, ctx, trainer, cb, final, started, {"lora": cfg.method.get("lora") is not None})
