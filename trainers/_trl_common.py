"""What the trl trainers (reward, dpo, grpo) share: the training section mapped onto a trl config, the datasets,
and `TrlRun`, which puts transformers' Trainer on hpcft's one trainer core (hpcft/train):

- the lr schedule is `hpcft.train.schedule` (warmup, then cosine to lr x lr_decay_ratio), not transformers' own;
- checkpoints go through `CheckpointManager`: transformers' own save policy is off, `should_save` decides, the
  Trainer writes its files into its staging dir `checkpoints/checkpoint-N/` and `publish` makes it
  `checkpoints/step-N/` + `latest` (atomic, retention applied); resume is `resolve_resume` -> trainer.train();
- the time-limit warning (SIGUSR1): a checkpoint at the next step, then `SavedAtWarning` (exit 75); with
  training.keep_checkpoints=off there is nothing to save and training goes on;
- the fault-injection seams (`hpcft.train.faults`) after every step and inside every save;
- metrics.jsonl lines, epoch/checkpoint events, and the one summary.json (`hpcft.train.summary`).

Layout written under cfg.output_dir (main rank only): metrics.jsonl, checkpoints/step-N/ + latest, final/,
summary.json; the base model of a config-built model lives in base/ (hpcft.train.modeling.base_model_path).
"""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig

from hpcft.train import checkpoint as ckpt
from hpcft.train import distributed as dist
from hpcft.train import faults, signals
from hpcft.train.context import RunContext
from hpcft.train.metrics import MetricsWriter


def device_has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# ------------------------------------------------------------------------------------------------------ setup

def liger_for_trl(cfg: DictConfig) -> bool:
    """training.kernels resolved for a trl method (hpcft.train.kernels; ConfigError where `liger` cannot apply)."""
    from hpcft.config.memory import model_arch
    from hpcft.train import kernels

    arch, _ = model_arch(cfg.model)
    return kernels.choose(cfg, arch.model_type if arch is not None else None) == "liger"


def trl_args(config_cls, cfg: DictConfig, ctx: RunContext, has_eval: bool, **method_kwargs: Any):
    """A trl *Config from cfg.training (+ method-specific kwargs). Sets every field whose trl/transformers default
    is wrong for us: trl turns bf16 and gradient_checkpointing on by default (here they follow training.precision
    and training.gradient_checkpointing), report_to would report to every installed tracker (hpcft's own
    trackers do that), and use_cpu must be set on a machine without a GPU. The lr schedule and the save policy
    are not transformers' (see TrlRun): its scheduler is replaced and its save strategy is off."""
    t = cfg.training
    out = Path(cfg.output_dir)
    kwargs: Dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),  # transformers stages a checkpoint in checkpoints/checkpoint-N
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        learning_rate=t.learning_rate,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,  # 0 = no clipping
        bf16=t.precision == "bf16",
        fp16=t.precision == "fp16",
        use_cpu=not device_has_gpu(),
        report_to="none",
        disable_tqdm=True,
        logging_strategy="steps",
        logging_steps=max(1, int(t.log_interval)),
        logging_first_step=True,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="no",  # CheckpointCallback sets control.should_save by hpcft's policy
        save_total_limit=None,  # CheckpointManager applies keep_checkpoints
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.num_workers,
        remove_unused_columns=False if config_cls.__name__ == "GRPOConfig" else True,
    )
    # training.gradient_checkpointing (trl's default is on); transformers >= 5.2x names it activation_checkpointing
    ac = "activation_checkpointing" if "activation_checkpointing" in getattr(config_cls, "__dataclass_fields__", {}) \
        else "gradient_checkpointing"
    kwargs[ac] = bool(t.get("gradient_checkpointing"))
    kwargs[f"{ac}_kwargs"] = {"use_reentrant": False} if t.get("gradient_checkpointing") else None
    ds = deepspeed_dict(cfg, ctx)
    if ds is not None:
        kwargs["deepspeed"] = ds
    if liger_for_trl(cfg):  # training.kernels: trl applies Liger's layer kernels itself
        kwargs["use_liger_kernel"] = True
    if ctx.world_size > 1:
        # LoRA / frozen reference weights get no gradients: DDP must not wait for them
        kwargs["ddp_find_unused_parameters"] = False
    kwargs.update(method_kwargs)
    return config_cls(**kwargs)


def deepspeed_dict(cfg: DictConfig, ctx: RunContext) -> Optional[Dict[str, Any]]:
    """The DeepSpeed config for transformers' Trainer (None without a ZeRO stage): the same generated config
    causal_lm uses (hpcft.train.deepspeed_config), without an optimizer section, so the Trainer hands DeepSpeed a
    torch AdamW (DeepSpeed's own optimizers are C++/CUDA extensions compiled at first use). On CPU the accelerator
    is selected before deepspeed is imported (DeepSpeed picks it at import) and the shared-memory comm op, which
    training never uses, is not built; with use_cpu=True (trl_args) the Trainer really runs DeepSpeed on CPU."""
    if cfg.deepspeed.get("stage") is None:
        return None
    from hpcft.train.deepspeed_config import build_ds_config

    dist.prepare_deepspeed_import()
    if not device_has_gpu():
        dist.skip_cpu_shm_op()
    return build_ds_config(cfg.deepspeed, cfg.training, ctx.world_size)


def prepare(cfg: DictConfig, ctx: RunContext, loader) -> tuple:
    """The shared start of a trl trainer: method checks, seed, base model path, tokenizer, train and eval datasets
    (`loader(path, role)` reads one split; role: train | validation | test). Returns (output_dir, base_path,
    tokenizer, train_dataset, eval_datasets)."""
    import torch

    from hpcft.config.methods import check_method
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
    return out, base, tok, to_dataset(loader(cfg.data.train, "train")), eval_datasets(cfg, loader)


def model_init_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """How trl loads the model from the base path."""
    from hpcft.train.modeling import attn_implementation, torch_dtype

    return {"dtype": torch_dtype(cfg.model.dtype), "trust_remote_code": bool(cfg.model.get("trust_remote_code")),
            "attn_implementation": attn_implementation(cfg.model, str(cfg.training.precision))}


def to_dataset(records: List[Dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(records)


def eval_datasets(cfg: DictConfig, loader) -> Dict[str, Any]:
    """{"validation": Dataset, "test": Dataset} for the splits that the data config names."""
    out = {}
    for split in ("validation", "test"):
        p = cfg.data.get(split)
        if p:
            out[split] = to_dataset(loader(p, split))
    return out


def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# -------------------------------------------------------------------------------------------- the trainer core

class TrlRun:
    """One run of a trl trainer on hpcft's trainer core. A trainer reads:

        run = TrlRun(cfg, ctx, splits, base)               # metrics, checkpoints, warning flag, resume point
        trainer = XTrainer(..., callbacks=run.callbacks)
        run.attach(trainer)                                # hpcft's lr schedule, one progress line per log
        run.train(trainer)                                 # resumes; raises SavedAtWarning on the warning
        final = run.save_final(trainer, tokenizer)
        return run.finish(trainer, final, method_info)
    """

    def __init__(self, cfg: DictConfig, ctx: RunContext, splits: List[str], base_model: str):
        self.cfg, self.ctx, self.t = cfg, ctx, cfg.training
        self.method = str(cfg.method.name)
        self.out = Path(cfg.output_dir)
        self.base_model = base_model
        self.log = MetricsWriter(self.out / "metrics.jsonl", enabled=ctx.is_main, cfg=cfg, job_id=ctx.job_id)
        self.flag = signals.install()
        self.manager = ckpt.CheckpointManager(self.out / "checkpoints", self.t.keep_checkpoints,
                                              is_main=ctx.is_main, barrier=dist.barrier, job_uuid=ctx.job_uuid)
        if ctx.is_main:
            self.manager.clean_stale()  # half-written staging dirs of a crashed save are never resumed from
        dist.barrier()
        self.resumed_from = self._resume_point()
        self.metrics_cb = make_metrics_callback(ctx, self.log, splits, self.method)
        self.checkpoint_cb = make_checkpoint_callback(self)
        self.callbacks = [self.metrics_cb, self.checkpoint_cb]
        self.train_time = 0.0
        self.start_step = int(ckpt.read_state(self.resumed_from)["step"]) if self.resumed_from else 0

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            print(msg, flush=True)

    def _resume_point(self) -> Optional[Path]:
        d = ckpt.resolve_resume(self.t.get("resume_from"), self.out, self.ctx.job_id, self.ctx.job_uuid)
        if d is None:
            return None
        world = int(ckpt.read_state(d).get("world_size", self.ctx.world_size))
        if world != self.ctx.world_size:
            from hpcft.errors import ConfigError

            raise ConfigError(f"checkpoint {d} was written with world_size={world}, this run has "
                              f"{self.ctx.world_size}; resume with the same number of processes")
        return d

    def attach(self, trainer) -> None:
        """hpcft's lr schedule instead of transformers'; a data order that a resume reproduces; our callback
        prints instead of transformers' printer."""
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        use_hpcft_schedule(trainer, self.t)
        reseed_sampler_each_epoch(trainer)

    def train(self, trainer) -> None:
        """trainer.train() from the resume point (transformers restores weights, optimizer, scheduler, RNG and
        the data position from the checkpoint); raises SavedAtWarning when the warning stopped it."""
        if self.resumed_from is not None:
            self.say(f"[hpcft] resumed from {self.resumed_from}: step {self.start_step}")
            self.ctx.event("resumed", f"resumed from step {self.start_step}", step=self.start_step,
                           path=str(self.resumed_from))
        t0 = time.time()
        try:
            trainer.train(resume_from_checkpoint=str(self.resumed_from) if self.resumed_from else None)
        except NothingLeftToTrain:  # killed after the last step's checkpoint, before final/ was written
            self.say(f"[hpcft] {self.resumed_from} holds the last step: nothing left to train")
            if trainer.eval_dataset is not None:
                trainer.evaluate()  # what the run would have done after its last step
        self.train_time = time.time() - t0
        cb = self.checkpoint_cb
        if cb.stopped_at_warning:
            self.log.close()
            dist.barrier()
            raise signals.SavedAtWarning(trainer.state.global_step, cb.last_path)

    def save_final(self, trainer, tokenizer) -> str:
        """final/: the model (full HF weights, or the peft adapter) + tokenizer, written to final.tmp and renamed
        (a crash while saving never leaves a half-written final/)."""
        final = self.out / "final"
        tmp = ckpt.staging_for(final) if self.ctx.is_main else final.with_name("final.tmp")
        dist.barrier()
        trainer.save_model(str(tmp))  # every rank (DeepSpeed gathers); only the main process writes
        if self.ctx.is_main:
            tokenizer.save_pretrained(str(tmp))
            ckpt.publish_dir(tmp, final)
        dist.barrier()
        return str(final)

    def finish(self, trainer, final_path: str, method_info: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """summary.json (hpcft.train.summary: the same keys for every method) + the returned summary."""
        from hpcft.train.summary import make_summary, write_summary

        par = parallelism(trainer)
        step = int(trainer.state.global_step)
        params = list(trainer.model.parameters())
        summary = make_summary(
            method=self.method, final_step=step, total_steps=int(trainer.state.max_steps),
            epochs=trainer.state.epoch, steps_this_run=step - self.start_step, train_time_s=self.train_time,
            train_history=self.metrics_cb.train_history, evals=self.metrics_cb.last_evals(),
            final_model=final_path, base_model=self.base_model, resumed_from=self.resumed_from,
            trainable_params=sum(_numel(p) for p in params if p.requires_grad),
            total_params=sum(_numel(p) for p in params), method_info=method_info, **par)
        if self.ctx.is_main:
            write_summary(self.out, summary)
            self.say(f"[{self.method}] done: {step} steps, final model {final_path}")
        self.log.close()
        return summary


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())  # ZeRO-3 partitions: the full size is ds_numel


def use_hpcft_schedule(trainer, training: Any) -> None:
    """Replace transformers' lr schedule by hpcft's (`hpcft.train.schedule.make_scheduler`: warmup over
    warmup_ratio of the steps, then cosine to lr x lr_decay_ratio). Set on the instance, so every path that
    builds the scheduler uses it: Trainer._prepare_for_training and, under DeepSpeed, deepspeed_init. The
    LambdaLR's position is saved in the checkpoint's scheduler.pt and restored on resume."""
    from hpcft.train.schedule import make_scheduler

    warmup, decay = float(training.warmup_ratio), float(training.lr_decay_ratio)

    def create_scheduler(num_training_steps: int, optimizer=None):
        if trainer.lr_scheduler is None:
            trainer.lr_scheduler = make_scheduler(optimizer if optimizer is not None else trainer.optimizer,
                                                  int(num_training_steps), warmup, decay)
            trainer._created_lr_scheduler = True  # transformers rebuilds it on a second train() call
        return trainer.lr_scheduler

    trainer.create_scheduler = create_scheduler


class NothingLeftToTrain(Exception):
    """The resumed checkpoint is at (or past) the run's last step. transformers would still run one more step when
    that step is inside an epoch (max_steps), so the run stops before its first step instead."""


def seed_step(seed: int, step: int, rank: int) -> None:
    """Seed python, numpy and torch from (seed, step, rank) at the start of every optimizer step, so that what a
    step draws (GRPO's sampled completions, dropout) depends on the step alone. transformers restores the RNG
    state saved with a checkpoint, but that state is the one at save time: an evaluation that samples after it
    (GRPO at an epoch's end) advances the RNG in an uninterrupted run and not in the resumed one."""
    from transformers.trainer_utils import set_seed

    set_seed((seed * 1_000_003 + step * 1_009 + rank) % 2**32)


def reseed_sampler_each_epoch(trainer) -> None:
    """trl's RepeatSampler (GRPO) draws every epoch's order from one torch.Generator seeded once: a run resumed in
    epoch e > 0 would draw epoch 0's order again. Here the generator is reseeded with seed + epoch through
    set_epoch, which transformers calls at every epoch's start (also on the resumed epoch), the way accelerate's
    SeedableRandomSampler does for the other trainers."""
    make = trainer._get_train_sampler

    def _get_train_sampler(dataset=None):
        sampler = make(dataset)
        if getattr(sampler, "generator", None) is not None and getattr(sampler, "seed", None) is not None:
            def set_epoch(epoch: int) -> None:
                sampler.generator.manual_seed(int(sampler.seed) + int(epoch))

            sampler.set_epoch = set_epoch
        return sampler

    trainer._get_train_sampler = _get_train_sampler


@functools.lru_cache(maxsize=None)
def trainer_callback(events: type) -> type:
    """`events` (a class of TrainerCallback event methods) on transformers' TrainerCallback, which supplies the
    events it leaves out. Built on first use, not at import: transformers imports torch."""
    from transformers import TrainerCallback

    return type(events.__name__, (events, TrainerCallback), {"__doc__": events.__doc__})


def make_checkpoint_callback(run: TrlRun):
    """The save policy, the warning and the fault seams (`CheckpointCallback`) as a TrainerCallback."""
    return trainer_callback(CheckpointCallback)(run)


def make_metrics_callback(ctx: RunContext, log: MetricsWriter, splits: List[str], method: str):
    """Train/eval lines, progress and epoch events (`MetricsCallback`) as a TrainerCallback."""
    return trainer_callback(MetricsCallback)(ctx, log, splits, method)


class CheckpointCallback:
    """The save policy, the warning and the fault seams: the events of a transformers TrainerCallback
    (`make_checkpoint_callback` puts them on transformers' base class).

    transformers calls on_step_end after each optimizer step, then logs, evaluates and saves (when
    control.should_save) and calls on_save; at an epoch's end on_epoch_end, then evaluation and save again.
    `should_save` decides (steps: every save_interval steps; epoch: every save_interval-th epoch, after that
    epoch's evaluation), the Trainer writes checkpoints/checkpoint-N, on_save publishes it as step-N. A step's
    fault seam (faults.after_step) runs once the step is logged and its checkpoint published: in on_save, else
    at the next on_step_begin / on_epoch_end / on_train_end."""

    def __init__(self, run: TrlRun):
        self.run, self.t, self.ctx, self.manager = run, run.t, run.ctx, run.manager
        self.reason: Optional[str] = None  # why the pending save happens: interval | epoch | warning
        self.done_step: Optional[int] = None  # a step whose fault seam has not run yet
        self.last_path: Optional[Path] = None
        self.last_step = -1
        self.stopped_at_warning = False
        self.warned_off = False  # said once that the warning is ignored (checkpoints off)

    def after_step(self) -> None:
        """The step's fault seam, once its line is logged and its checkpoint (if any) published."""
        if self.done_step is not None:
            step, self.done_step = self.done_step, None
            faults.after_step(step)

    def on_train_begin(self, args, state, control, **kw):
        if state.max_steps and state.global_step >= state.max_steps:  # state as restored from a checkpoint
            raise NothingLeftToTrain()

    def on_step_begin(self, args, state, control, **kw):
        self.after_step()  # the previous step's (logged and saved by now)
        seed_step(int(self.t.seed), state.global_step, self.ctx.rank)

    def on_step_end(self, args, state, control, **kw):
        step = state.global_step
        self.done_step = step
        if ckpt.should_save(self.t.save_strategy, int(self.t.save_interval), step):
            self.reason = "interval"
        # a collective on every rank at every step; at the last step training ends anyway
        if self.run.flag.agreed() and not control.should_training_stop:
            self._at_warning(step, control)
        if self.reason and self.manager.enabled:
            control.should_save = True
        else:
            self.reason = None

    def _at_warning(self, step: int, control) -> None:
        """The time-limit warning: a checkpoint at this step, then stop. With checkpoints off there is nothing to
        save and stopping would only lose the work (a requeue restarts): training goes on, said once."""
        if not self.manager.enabled:
            if not self.warned_off:
                self.run.say("[hpcft] time-limit warning, but training.keep_checkpoints=off: nothing to save, "
                             "training on")
                self.warned_off = True
            return
        self.reason = "warning"
        self.stopped_at_warning = True
        control.should_training_stop = True
        self.run.say(f"[hpcft] time-limit warning: saving a checkpoint at step {step} and stopping")

    def on_epoch_end(self, args, state, control, **kw):
        self.after_step()  # before the epoch's evaluation and checkpoint
        if self.stopped_at_warning:  # stopped inside the epoch: no evaluation or save of an unfinished epoch
            control.should_evaluate = control.should_save = False
        elif self._saves_at_epoch_end(state):
            self.reason = "epoch"
            control.should_save = True

    def _saves_at_epoch_end(self, state) -> bool:
        done = round(state.epoch or 0)
        if abs((state.epoch or 0) - done) > 1e-6:
            return False  # max_steps ended training inside an epoch
        return (self.manager.enabled and state.global_step != self.last_step
                and ckpt.should_save(self.t.save_strategy, int(self.t.save_interval), state.global_step,
                                     epoch_end=done))

    def on_train_end(self, args, state, control, **kw):
        self.after_step()

    def on_save(self, args, state, control, **kw):
        step = state.global_step
        staging = Path(args.output_dir) / f"checkpoint-{step}"
        faults.in_save(step)
        reason = self.reason or "interval"
        path = self.manager.publish(staging, step, self._state(args, state, kw.get("train_dataloader"), reason))
        self.last_path, self.last_step, self.reason = path, step, None
        self.run.say(f"[hpcft] checkpoint step {step} ({reason}) -> {path}")
        self.ctx.event("checkpoint", f"checkpoint at step {step} ({reason})", step=step, path=str(path),
                       reason=reason)
        self.after_step()

    def _state(self, args, state, loader, reason: str) -> Dict[str, Any]:
        """The checkpoint's state.json beside transformers' own files."""
        ctx = self.ctx
        st: Dict[str, Any] = {"epoch": int(math.floor((state.epoch or 0) + 1e-6)), "job_id": ctx.job_id,
                              "world_size": ctx.world_size, "method": self.run.method, "reason": reason,
                              "total_steps": state.max_steps}
        try:  # transformers' own count of optimizer steps per epoch
            n, ga = len(loader), int(args.gradient_accumulation_steps)
            per_epoch = max(n // ga + int(n % ga > 0), 1)
            st["epoch"], st["step_in_epoch"] = divmod(int(state.global_step), per_epoch)
        except TypeError:  # no dataloader, or one without a length
            pass
        return st


RECORD_KEYS = ("type", "split", "epoch", "step")  # a metrics line's keys that are not metrics


class MetricsCallback:
    """Train/eval lines in metrics.jsonl, progress printed, epoch events: the events of a transformers
    TrainerCallback (`make_metrics_callback` puts them on transformers' base class). Eval metrics of the last
    split close the epoch (one `epoch` event with all splits)."""

    def __init__(self, ctx: RunContext, log: MetricsWriter, splits: List[str], method: str):
        self.ctx, self.log, self.splits, self.method = ctx, log, splits, method
        self.t0 = time.time()
        self.pending: Dict[str, Any] = {}
        self.evals: List[Dict[str, Any]] = []
        self.train_history: List[Dict[str, Any]] = []

    def last_evals(self) -> Dict[str, Dict[str, float]]:
        """{split: {metric: value}} of the latest evaluation of each split."""
        return {r["split"]: {k: v for k, v in r.items() if k not in RECORD_KEYS} for r in self.evals}

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
        self.train_history.append(rec)
        if self.ctx.is_main:
            self.log.write(rec)
            shown = " ".join(f"{k}={rec[k]:.4g}" for k in ("loss", "reward", "rewards/margins", "accuracy", "lr")
                             if rec.get(k) is not None)
            print(f"[{self.method}] step {state.global_step}/{state.max_steps} {shown} "
                  f"({time.time() - self.t0:.1f}s)", flush=True)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        rec = eval_record(dict(metrics or {}), self.splits, state)
        split, epoch = rec["split"], rec["epoch"]
        self.evals.append(rec)
        self.pending[split] = rec
        if self.ctx.is_main:
            self.log.write(rec)
            shown = " ".join(f"{k}={v:.4g}" for k, v in rec.items() if k not in RECORD_KEYS and isinstance(v, float))
            print(f"[{self.method}] eval {split} epoch {epoch}: {shown}", flush=True)
        if split == self.splits[-1]:
            data = {f"{s}_{k}": v for s, r in self.pending.items() for k, v in r.items() if k not in RECORD_KEYS}
            self.ctx.event("epoch", f"epoch {epoch} evaluated at step {state.global_step}",
                           epoch=epoch, step=state.global_step, **data)
            self.pending = {}


def eval_record(metrics: Dict[str, Any], splits: List[str], state) -> Dict[str, Any]:
    """The metrics.jsonl line of one evaluation: the split it was (found in its keys), the epoch, and the split's
    own metrics (eval_<split>_loss) with the ones trl logs without the split (eval_accuracy)."""
    split = next((s for s in splits if any(k.startswith(f"eval_{s}_") for k in metrics)), None)
    prefix = f"eval_{split}_" if split else "eval_"
    split = split or (splits[0] if splits else "validation")
    epoch = int(math.ceil(state.epoch or 0)) if state.epoch else 0
    rec: Dict[str, Any] = {"type": "eval", "split": split, "epoch": epoch, "step": state.global_step}
    others = tuple(f"eval_{s}_" for s in splits)
    for k, v in metrics.items():
        if _num(v) is None or k.endswith(("_runtime", "_per_second")) or k == "epoch":
            continue
        if k.startswith(prefix):
            rec[k[len(prefix):]] = _num(v)
        elif k.startswith("eval_") and not k.startswith(others):
            rec.setdefault(k[len("eval_"):], _num(v))
    return rec


def parallelism(trainer) -> Dict[str, Any]:
    """How the Trainer really ran (not what was asked): world size, DeepSpeed stage (None: off) and the sha256 of
    the trainable weights on every rank (equal in a healthy data-parallel run). Called on every rank (collective).
    """
    from hpcft.train.modeling import params_hash

    stage = None
    if getattr(trainer, "is_deepspeed_enabled", False):
        stage = int(trainer.accelerator.state.deepspeed_plugin.zero_stage)
    h = params_hash(trainer.model, stage == 3)
    return {"world_size": int(trainer.args.world_size), "deepspeed_stage": stage,
            "param_hashes": dist.all_gather_object(h)}
