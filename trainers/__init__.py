"""Trainers run inside a job: one readable file per training method (causal_lm: pretrain, full, lora and qlora;
reward, dpo, grpo; text_to_image: t2i_lora), named by `hpcft.config.methods.METHOD_SPECS`; `_trl_common` is what
the trl-based ones (reward, dpo, grpo) share."""
