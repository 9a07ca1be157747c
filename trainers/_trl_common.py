"""What the trl trainers (reward, dpo, grpo) share: the training section mapped onto a trl config, datasets,
the metrics/events callback, checkpoint resume, the final save and the summary.

Layout written under cfg.output_dir (main rank only): metrics.jsonl, checkpoints/checkpoint-N/, final/,
summary.json; the base model of a config-built model lives in base/ (hpcft.train.modeling.base_model_path).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from hpcft.train.context import RunContext
from hpcft.train.metrics import MetricsWriter


def device_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def trl_args(config_cls, cfg: DictConfig, ctx: RunContext, has_eval: bool, **method_kwargs: Any):
    """A trl *Config from cfg.training (+ method-specific kwargs). Sets what trl's defaults get wrong for us
    (pitfall 7: bf16 and gradient_checkpointing default to True; report_to; use_cpu on CPU)."""
    t = cfg.training
    out = Path(cfg.output_dir)
    keep = str(t.keep_checkpoints)
    if t.lr_decay_ratio >= 1:
        sched, sched_kwargs = ("constant_with_warmup" if t.warmup_ratio > 0 else "constant"), None
    elif t.lr_decay_ratio == 0:
        sched, sched_kwargs = "cosine", None
    else:
        sched, sched_kwargs = "cosine_with_min_lr", {"min_lr_rate": float(t.lr_decay_ratio)}  # a rate: DeepSpeed's optimizer has no .defaults
    kwargs: Dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        warmup_steps=float(t.warmup_ratio),  # < 1: a ratio of the total steps
        lr_scheduler_type=sched,
        lr_scheduler_kwargs=sched_kwargs,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,  # 0 = no clipping
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        gradient_checkpointing=False,
        use_cpu=not device_has_gpu(),
        report_to="none",
        disable_tqdm=True,
        logging_strategy="steps",
        logging_steps=max(1, int(t.log_interval)),
        logging_first_step=True,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="no" if keep == "off" else t.save_strategy,
        save_steps=t.save_interval,
        save_total_limit=int(keep) if keep.isdigit() else None,
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False if config_cls.__name__ == "GRPOConfig" else True,
    )
    ds = deepspeed_dict(cfg, ctx)
    if ds is not None:
        kwargs["deepspeed"] = ds
    if ctx.world_size > 1:
        # LoRA / frozen reference weights get no gradients: DDP must not wait for them
        kwargs["ddp_find_unused_parameters"] = False
    kwargs.update(method_kwargs)
    return config_cls(**kwargs)


def deepspeed_dict(cfg: DictConfig, ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The DeepSpeed config for transformers' Trainer (None without a ZeRO stage): the same generated config
    causal_lm uses (hpcft.train.deepspeed_config), without an optimizer section, so the Trainer hands DeepSpeed a
    torch AdamW (no C++ optimizer build, pitfall 4). On CPU the accelerator is selected before deepspeed is
    imported and the shm comm op is not built; with use_cpu=True (set above) the Trainer really runs DeepSpeed
    on CPU (pitfall 2)."""
    if cfg.deepspeed.get("stage") is None:
        return None
    from hpcft.train import distributed as dist
    from hpcft.train.deepspeed_config import build_ds_config

    dist.prepare_deepspeed_import()
    if not device_has_gpu():
        dist._skip_cpu_shm_op()
    return build_ds_config(cfg.deepspeed, cfg.training, ctx.world_size)


def resume_checkpoint(cfg: DictConfig) -> Optional[str]:
    """training.resume_from mapped to trainer.train(resume_from_checkpoint=...): 'latest' = the newest
    checkpoint of this run (None when there is none yet), or a checkpoint directory."""
    r = cfg.training.resume_from
    if r is None:
        return None
    if r == "latest":
        from transformers.trainer_utils import get_last_checkpoint

        d = Path(cfg.output_dir) / "checkpoints"
        return get_last_checkpoint(str(d)) if d.is_dir() else None
    return str(r)


def prepare(cfg: DictConfig, ctx: RunContext, loader) -> tuple:
    """The shared start of a trl trainer: method checks, seed, base model path, tokenizer, train and eval datasets
    (`loader(path)` reads one split). Returns (output_dir, base_path, tokenizer, train_dataset, eval_datasets)."""
    import torch

    from hpcft.train import distributed as dist
    from hpcft.train.method_checks import check_method
    from hpcft.train.modeling import base_model_path, load_tokenizer

    check_method(cfg)
    out = Path(cfg.output_dir)
    # the process group exists before the Trainer (and ZeRO-3's zero.Init while loading) needs it: gloo on CPU,
    # nccl on GPU, through DeepSpeed when a ZeRO stage is configured
    dist.init_distributed(ctx, deepspeed=cfg.deepspeed.get("stage") is not None)
    torch.manual_seed(cfg.training.seed)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        base_model_path(cfg.model, out, seed=cfg.training.seed, is_main=True)
    dist.barrier()  # other ranks load base/ only once the main rank has written it
    base = base_model_path(cfg.model, out, seed=cfg.training.seed, is_main=False)
    tok = load_tokenizer(cfg.model, base)
    return out, base, tok, to_dataset(loader(cfg.data.train)), eval_datasets(cfg, loader)


def model_init_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """How trl loads the model from the base path."""
    from hpcft.train.modeling import torch_dtype

    return {"dtype": torch_dtype(cfg.model.dtype), "trust_remote_code": bool(cfg.model.get("trust_remote_code"))}


def to_dataset(records: List[Dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(records)


def eval_datasets(cfg: DictConfig, loader) -> Dict[str, Any]:
    """{"validation": Dataset, "test": Dataset} for the splits that the data config names."""
    out = {}
    for split in ("validation", "test"):
        p = cfg.data.get(split)
        if p:
            out[split] = to_dataset(loader(p))
    return out


def peft_lora(method_cfg: Any, task_type: str, modules_to_save: Optional[List[str]] = None):
    """peft.LoraConfig from method.lora (None when method.lora is unset)."""
    if method_cfg.get("lora") is None:
        return None
    import warnings

    from peft import LoraConfig

    lo = method_cfg.lora
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return LoraConfig(r=int(lo.rank), lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                          target_modules=list(lo.target_modules), task_type=task_type,
                          modules_to_save=modules_to_save)


def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def make_callback(ctx: RunContext, log: "MetricsWriter", splits: List[str], method: str):
    """A transformers TrainerCallback writing train/eval lines, printing progress and recording epoch and
    checkpoint events. Eval metrics of the last split close the epoch (one `epoch` event with all splits)."""
    from transformers import TrainerCallback

    class HpcftCallback(TrainerCallback):
        def __init__(self):
            self.t0 = time.time()
            self.pending: Dict[str, Any] = {}
            self.last_train: Dict[str, Any] = {}
            self.evals: List[Dict[str, Any]] = []
            self.train_history: List[Dict[str, Any]] = []

        def on_log(self, args, state, control, logs=None, **kw):
            logs = dict(logs or {})
            if not logs or any(k.startswith("eval_") for k in logs) or "train_runtime" in logs:
                return
            rec: Dict[str, Any] = {"type": "train", "step": state.global_step}
            for k, v in logs.items():
                if k == "learning_rate":
                    rec["lr"] = _num(v)
                elif _num(v) is not None:
                    rec[k] = _num(v)
            self.last_train = rec
            self.train_history.append(rec)
            if ctx.is_main:
                log.write(rec)
                shown = " ".join(f"{k}={rec[k]:.4g}" for k in ("loss", "reward", "rewards/margins", "accuracy",
                                                                 "lr") if rec.get(k) is not None)
                print(f"[{method}] step {state.global_step}/{state.max_steps} {shown} "
                      f"({time.time() - self.t0:.1f}s)", flush=True)

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            metrics = dict(metrics or {})
            split = next((s for s in splits if any(k.startswith(f"eval_{s}_") for k in metrics)), None)
            prefix = f"eval_{split}_" if split else "eval_"
            split = split or (splits[0] if splits else "validation")
            epoch = int(math.ceil(state.epoch or 0)) if state.epoch else 0
            rec: Dict[str, Any] = {"type": "eval", "split": split, "epoch": epoch, "step": state.global_step}
            # the split's own keys (eval_<split>_loss) and the ones trl logs without the split (eval_accuracy)
            others = tuple(f"eval_{s}_" for s in splits)
            for k, v in metrics.items():
                if _num(v) is None or k.endswith(("_runtime", "_per_second")) or k == "epoch":
                    continue
                if k.startswith(prefix):
                    rec[k[len(prefix):]] = _num(v)
                elif k.startswith("eval_") and not k.startswith(others):
                    rec.setdefault(k[len("eval_"):], _num(v))
            self.evals.append(rec)
            self.pending[split] = rec
            if ctx.is_main:
                log.write(rec)
                shown = " ".join(f"{k}={v:.4g}" for k, v in rec.items()
                                 if k not in ("type", "split", "epoch", "step") and isinstance(v, float))
                print(f"[{method}] eval {split} epoch {epoch}: {shown}", flush=True)
            if split == splits[-1]:
                data = {f"{s}_{k}": v for s, r in self.pending.items() for k, v in r.items()
                        if k not in ("type", "split", "epoch", "step")}
                ctx.event("epoch", f"epoch {epoch} evaluated at step {state.global_step}",
                          epoch=epoch, step=state.global_step, **data)
                self.pending = {}

        def on_save(self, args, state, control, **kw):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ctx.is_main:
                print(f"[{method}] checkpoint {path}", flush=True)
            ctx.event("checkpoint", f"checkpoint at step {state.global_step}", step=state.global_step,
                      path=str(path))

    return HpcftCallback()


def quiet(trainer) -> None:
    """Drop transformers' dict-printing callback: our callback prints one line per log."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


def save_final(trainer, tokenizer, output_dir: Path, ctx: RunContext, merged_copy: bool = False) -> str:
    """final/: the model (full HF weights, or the peft adapter) + tokenizer."""
    final = Path(output_dir) / "final"
    trainer.save_model(str(final))  # main-process-only internally; handles peft and DeepSpeed
    if ctx.is_main:
        tokenizer.save_pretrained(str(final))
    return str(final)


def parallelism(trainer) -> Dict[str, Any]:
    """How the Trainer really ran (not what was asked): world size, DeepSpeed stage (None: off) and the sha256 of
    the trainable weights on every rank (equal in a healthy data-parallel run). Called on every rank (collective).
    """
    from hpcft.train import distributed as dist
    from trainers.causal_lm import params_hash

    stage = None
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = int(trainer.accelerator.state.deepspeed_plugin.zero_stage)
    h = params_hash(trainer.model, stage == 3)
    return {"world_size": int(trainer.args.world_size), "deepspeed_stage": stage,
            "param_hashes": dist.all_gather_object(h)}


def finish(cfg: DictConfig, ctx: RunContext, trainer, callback, final_path: str, started: float,
           extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """summary.json + the returned summary dict."""
    first = callback.train_history[0] if callback.train_history else {}
    par = parallelism(trainer)
    summary: Dict[str, Any] = {
        "method": cfg.method.name,
        "steps": trainer.state.global_step,
        "final_step": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "first_train": first,
        "final_train": callback.last_train,
        "final_metrics": {f"{r['split']}_{k}": v for r in callback.evals for k, v in r.items()
                          if k not in ("type", "split", "epoch", "step")},  # the latest of each split
        "final_model": final_path,
        "seconds": round(time.time() - started, 2),
        **par,
    }
    if extra:
        summary.update(extra)
    if ctx.is_main:
        (Path(cfg.output_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        print(f"[{cfg.method.name}] done: {summary['steps']} steps, final model {final_path}", flush=True)
    return summary


def config_dict(cfg: DictConfig) -> Dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
