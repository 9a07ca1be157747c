"""method=reward: a reward model (sequence classifier, 1 score) trained with trl's RewardTrainer on
{"prompt","chosen","rejected"} pairs. Pairwise accuracy (score(chosen) > score(rejected)) on validation and test
after each epoch. method.lora set: LoRA adapters + a trained score head (peft), else all weights.

final/ holds the HF model (or the peft adapter) + tokenizer; method=grpo loads it with method.reward_model.
"""

from __future__ import annotations

from omegaconf import DictConfig

from hpcft.train.context import RunContext


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    from trl import RewardConfig, RewardTrainer

    from hpcft.train.lora import lora_config
    from hpcft.train.preference_data import load_preference
    from trainers import _trl_common as C

    # setup
    out, base, tok, train_ds, evals = C.prepare(cfg, ctx, lambda path, role: load_preference(path, cfg.data, role))
    args = C.trl_args(
        RewardConfig, cfg, ctx, has_eval=bool(evals),
        max_length=cfg.training.sequence_length,
        center_rewards_coefficient=cfg.method.get("center_rewards_coefficient"),
        model_init_kwargs=C.model_init_kwargs(cfg),
        disable_dropout=True,
    )
    run = C.TrlRun(cfg, ctx, list(evals), base)
    trainer = RewardTrainer(
        model=base,  # a path: trl loads AutoModelForSequenceClassification(num_labels=1)
        args=args,
        train_dataset=train_ds,
        eval_dataset=evals or None,
        processing_class=tok,
        callbacks=run.callbacks,
        peft_config=lora_config(cfg.method, "SEQ_CLS"),  # SEQ_CLS keeps the score head trainable and saved
    )
    run.attach(trainer)
    if trainer.model.config.pad_token_id is None:
        trainer.model.config.pad_token_id = tok.pad_token_id

    # train
    run.train(trainer)

    # save
    final = run.save_final(trainer, tok)
    return run.finish(trainer, final, {"lora": cfg.method.get("lora") is not None})
