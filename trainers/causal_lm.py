"""Causal-LM training: pretrain, full fine-tuning, LoRA and QLoRA, one straight loop.

    CausalLMRecipe: setup (model, data, optimizer, schedule, engine) -> resume -> train (epochs of steps, eval
    after each epoch, checkpoints by policy, the time-limit warning) -> finish (final model, summary)

Reads top to bottom; the components live in `hpcft.train` (data, schedule, checkpoint, engine, signals, summary,
metrics, distributed). The `Engine` hides plain torch vs DeepSpeed, so the loop has no DeepSpeed branches.
Launch: hpcft submit method=lora data=tiny_sft   (or: python -m hpcft.train.entry --config RUN_DIR/config.yaml)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hpcft.errors import ConfigError
from hpcft.train import checkpoint as ckpt
from hpcft.train import data as D
from hpcft.train import distributed as dist
from hpcft.train import faults, signals
from hpcft.train.metrics import MetricsWriter, peak_mem_mb, progress_line
from hpcft.train.modeling import params_hash
from hpcft.train.optim import adamw, param_groups
from hpcft.train.schedule import make_scheduler
from hpcft.train.summary import make_summary, write_summary


def log(ctx, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


# ------------------------------------------------------------------------------------------------- the model

def disable_bnb_cpu_repack(model) -> int:
    """bitsandbytes' CPU fast path: on CPUs with AVX512-BF16, a 4-bit forward under no_grad (eval) repacks the
    weights and LoRA gets no gradients afterwards. Turning the fast path off on every Linear4bit keeps QLoRA
    learning after an evaluation."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def build_model(cfg, ctx, info: dict | None = None):
    """(model, tokenizer, base path) with only the weights that train requiring grad. training.kernels is applied
    before the model is built; `info["fused_ce"]` says whether its forward takes the labels and computes the loss
    with Liger's fused linear cross-entropy."""
    from hpcft.train import kernels
    from hpcft.train.modeling import base_model_path, load_causal_lm, load_tokenizer

    method = cfg.method.name
    if ctx.is_main:
        base_model_path(cfg.model, ctx.output_dir, seed=cfg.training.seed, is_main=True)
    dist.barrier()
    path = base_model_path(cfg.model, ctx.output_dir, seed=cfg.training.seed, is_main=False)
    tok = load_tokenizer(cfg.model, path)
    quant = cfg.method.get("quantization") if method == "qlora" else None
    fused = kernels.setup(cfg, path, log=lambda m: log(ctx, m))
    if info is not None:
        info["fused_ce"] = fused
    model = load_causal_lm(cfg.model, path, quantization=quant, precision=str(cfg.training.precision))
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        disable_bnb_cpu_repack(model)
    if cfg.training.get("gradient_checkpointing"):
        from hpcft.train.modeling import enable_gradient_checkpointing

        enable_gradient_checkpointing(model)
    if method in ("lora", "qlora"):
        import warnings

        from peft import get_peft_model

        from hpcft.train.lora import lora_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, lora_config(cfg.method, "CAUSAL_LM"))
        if method == "qlora":
            disable_bnb_cpu_repack(model)
    if quant is None:
        model.to(dist.device(ctx))
    model.config.use_cache = False
    return model, tok, path


def token_loss(logits, labels):
    """(mean next-token cross-entropy over label tokens, number of label tokens).

    The labels are shifted (not the logits: no copy of the batch x sequence x vocab tensor) and counted where they
    are (pass them on the CPU, as collate makes them: no device sync); they move to the logits' device here."""
    import torch.nn.functional as F

    shift_labels = F.pad(labels[:, 1:], (0, 1), value=D.IGNORE)
    n = int((shift_labels != D.IGNORE).sum())
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                            shift_labels.to(logits.device, non_blocking=True).reshape(-1),
                            ignore_index=D.IGNORE, reduction="sum")
    return total / max(n, 1), n


# ----------------------------------------------------------------------------------------------------- train

class CausalLMRecipe:
    """One run of a causal-LM method: setup() -> resume() -> train() -> finish()."""

    def __init__(self, cfg, ctx):
        self.cfg, self.ctx, self.t = cfg, ctx, cfg.training
        self.method = cfg.method.name
        self.out = Path(cfg.output_dir)
        ctx.output_dir = self.out
        self.step, self.start_epoch, self.skip = 0, 0, 0
        self.resumed_from: Path | None = None
        self.history: list[dict[str, Any]] = []
        self.evals: dict[str, dict[str, float]] = {}
        self.steps_this_run = 0
        self.last_saved: Path | None = None
        self.last_saved_step = -1
        self.warned_off = False
        self.fused_ce = False  # set by setup(): training.kernels=liger's fused linear cross-entropy

    def log(self, msg: str) -> None:
        if self.ctx.is_main:
            print(msg, flush=True)

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch

        from hpcft.train.engine import Engine

        cfg, ctx, t = self.cfg, self.ctx, self.t
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        use_ds = dist.use_deepspeed(cfg, ctx)
        dist.init_distributed(ctx, deepspeed=use_ds)
        torch.manual_seed(int(t.seed))
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", enabled=ctx.is_main, cfg=cfg, job_id=ctx.job_id)
        self.warning = signals.install()

        info: dict = {}
        model, self.tok, self.base_path = build_model(cfg, ctx, info)
        self.fused_ce = bool(info.get("fused_ce"))  # training.kernels=liger: the model computes the loss
        self.n_total = sum(p.numel() for p in model.parameters())
        self.n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        # packed batches for flash-attention: one row per micro-batch (it reads sample bounds from position ids)
        self.flatten = D.flattens(t.get("packing"), getattr(model.config, "_attn_implementation", ""))
        stage = cfg.deepspeed.get("stage")
        self.ds_stage = (int(stage) if stage is not None else 0) if use_ds else None
        self.log(f"[hpcft] method={self.method} model={cfg.model.name} params={self.n_total:,} "
                 f"trainable={self.n_train:,} world={ctx.world_size} "
                 f"deepspeed={'zero' + str(self.ds_stage) if use_ds else 'off'}")
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        self.splits = self.load_data()
        self.train_set = self.splits["train"]
        bs, accum, world = int(t.batch_size), int(t.gradient_accumulation), ctx.world_size
        self.spe = D.steps_per_epoch(len(self.train_set), bs, accum, world)
        if self.spe < 1:
            raise ConfigError(f"data.train has {len(self.train_set)} samples: fewer than one optimizer step of "
                              f"batch_size*gradient_accumulation*world = {bs * accum * world}; use more data or a "
                              "smaller training.batch_size")
        if t.get("max_steps"):
            self.total_steps = int(t.max_steps)
            self.epochs = math.ceil(self.total_steps / self.spe)
        else:
            self.epochs = int(t.epochs)
            self.total_steps = self.epochs * self.spe

        opt = adamw(param_groups(model, float(t.weight_decay)), lr=float(t.learning_rate))
        sched = make_scheduler(opt, self.total_steps, float(t.warmup_ratio), float(t.lr_decay_ratio))
        ds_conf = None
        if use_ds:
            from hpcft.train.deepspeed_config import build_ds_config

            ds_conf = build_ds_config(cfg.deepspeed, t, world)
        device = dist.device(ctx) if self.method != "qlora" else next(model.parameters()).device
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(t.precision))
        self.engine = Engine(model, opt, sched, device=device, ds_config=ds_conf, max_grad_norm=float(t.max_grad_norm),
                             amp_dtype=amp, is_main=ctx.is_main)
        self.manager = ckpt.CheckpointManager(self.out / "checkpoints", t.keep_checkpoints, is_main=ctx.is_main,
                                              barrier=dist.barrier, job_uuid=ctx.job_uuid)

    def load_data(self) -> dict[str, D.Split]:
        t, ctx = self.t, self.ctx
        splits: dict[str, D.Split] = {}
        for name in ("train", "validation", "test"):
            path = self.cfg.data.get(name)
            if not path:
                continue
            sp = D.load_job_split(self.cfg, name, self.tok, log=self.log)  # source, format, packing, token file
            splits[name] = sp
            self.metrics.write({"type": "data", "split": name, "samples": len(sp), "truncated": sp.truncated,
                                **({"packed_from": sp.packed_from} if sp.packed_from else {})})
            if sp.truncated:
                msg = (f"{sp.truncated} of {sp.packed_from or len(sp)} {name} samples longer than "
                       f"{t.sequence_length} tokens truncated")
                self.log(f"[hpcft] warning: {msg}")
                ctx.event("truncated", msg, split=name, samples=len(sp), truncated=sp.truncated)
        return splits

    # ------------------------------------------------------------------------------------------------ resume
    def resume(self) -> None:
        """Continue from the run's latest checkpoint (requeue, restart, `hpcft resume`) or a chosen one."""
        if self.ctx.is_main:
            self.manager.clean_stale()
        d = ckpt.resolve_resume(self.t.get("resume_from"), self.out, self.ctx.job_id, self.ctx.job_uuid)
        if d is None:
            return
        state = ckpt.read_state(d)
        world = self.ctx.world_size
        if int(state.get("world_size", world)) != world:
            raise ConfigError(f"checkpoint {d} was written with world_size={state['world_size']}, this run has "
                              f"{world}; resume with the same number of processes")
        self.engine.load_state(d)
        self.step, self.start_epoch, self.skip = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        rng = d / f"rng-rank{self.ctx.rank}.pt"
        if rng.is_file():
            ckpt.load_rng(rng)
        self.resumed_from = d
        self.log(f"[hpcft] resumed from {d}: step {self.step}, epoch {self.start_epoch}, "
                 f"step in epoch {self.skip}")
        self.ctx.event("resumed", f"resumed from step {self.step}", step=self.step, path=str(d))

    # ------------------------------------------------------------------------------------------------ steps
    def train_step(self, micro: list[list[int]]):
        """One optimizer step over its micro-batches: (mean loss on this rank as a 0-d tensor on the device, tokens
        seen). The loss stays on the device (no sync per micro-batch); log_step reads it only when it logs."""
        loss_acc, n_tok = None, 0
        for mb in micro:
            samples = [self.train_set.samples[i] for i in mb]
            batch = D.collate(samples, self.pad_id, flatten=self.flatten)  # packed: position_ids, no attention_mask
            labels = batch.pop("labels")
            n_tok += sum(len(s.input_ids) for s in samples)  # real tokens, no padding (no device sync)
            if self.fused_ce:  # Liger: the same mean over label tokens (shifted alike), no logits held
                loss = self.engine(**batch, labels=labels).loss
            else:  # (the logits stay referenced until the step ends: hpcft.config.memory's LOGIT_BYTES counts them;
                # freeing them before the backward pass saves tokens x vocabulary x dtype bytes, to be re-measured on
                # a GPU with the estimate before it changes)
                logits = self.engine(**batch).logits
                loss, _ = token_loss(logits, labels)
            part = loss.detach() / len(micro)
            loss_acc = part if loss_acc is None else loss_acc + part
            self.engine.backward(loss, len(micro))
        self.engine.optimizer_step()
        return loss_acc, n_tok

    def log_step(self, epoch: int, k: int, n_batches: int, micro, loss, n_tok: int, lr: float,
                 dt: float) -> None:
        t = self.t
        if self.step % int(t.log_interval) != 0 and self.step != self.total_steps:
            return
        loss_g, tok_g = dist.all_reduce_sum([float(loss), float(n_tok)])
        rec = {"type": "train", "step": self.step, "epoch": round(epoch + (k + 1) / n_batches, 4),
               "loss": loss_g / self.ctx.world_size, "lr": lr, "tokens_per_s": tok_g / dt,
               "peak_mem_mb": peak_mem_mb()}
        if t.get("log_sample_ids"):
            ids = [i for mb in micro for i in mb]
            rec["samples"] = [i for r in dist.all_gather_object(ids) for i in r]
        self.metrics.write(rec)
        self.history.append(rec)
        self.log(progress_line(self.step, self.total_steps, rec["loss"], lr, tok_g / dt, rec["epoch"]))

    def evaluate(self, split: D.Split) -> dict[str, float]:
        import torch

        bs, world = int(self.t.batch_size), self.ctx.world_size
        self.engine.eval()
        order = D.shard(range(len(split)), self.ctx.rank, world)
        real = [i < len(split) for i in range(len(order) * world)][self.ctx.rank::world]  # padding repeats samples
        loss_sum, n_tok = 0.0, 0
        with torch.no_grad():
            for b0 in range(0, len(order), bs):
                batch = D.collate([split.samples[i] for i in order[b0:b0 + bs]], self.pad_id)
                labels = batch.pop("labels").clone()
                labels[[j for j, keep in enumerate(real[b0:b0 + bs]) if not keep]] = D.IGNORE
                mean, n = token_loss(self.engine(**batch).logits, labels)
                loss_sum += float(mean) * n
                n_tok += n
        loss_sum, n_tok = dist.all_reduce_sum([loss_sum, float(n_tok)])
        self.engine.train()
        loss = loss_sum / max(n_tok, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def run_evals(self, epoch_label: float) -> None:
        res = {}
        for name in ("validation", "test"):
            if name in self.splits:
                res[name] = r = self.evaluate(self.splits[name])
                self.metrics.write({"type": "eval", "split": name, "epoch": epoch_label, "step": self.step, **r})
        if res:
            self.log(f"[hpcft] eval epoch {epoch_label} step {self.step}: " + ", ".join(
                f"{k} loss {v['loss']:.4f} ppl {v['perplexity']:.2f}" for k, v in res.items()))
            self.ctx.event("epoch", f"epoch {epoch_label} evaluated", epoch=epoch_label, step=self.step,
                           **{f"{k}_{m}": v[m] for k, v in res.items() for m in ("loss", "perplexity")})
        self.evals = res
        self.evals_step = self.step

    # ------------------------------------------------------------------------------------------------ save
    def save(self, epoch: int, step_in_epoch: int, reason: str) -> Path | None:
        """A checkpoint of where training stands: engine state + every rank's RNG, published atomically."""
        def write(d: Path) -> None:
            self.engine.save_state(d)
            ckpt.save_rng(d / f"rng-rank{self.ctx.rank}.pt")

        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "total_steps": self.total_steps,
                 "world_size": self.ctx.world_size, "method": self.method, "job_id": self.ctx.job_id,
                 "reason": reason}
        p = self.manager.save(self.step, write, state)
        self.last_saved, self.last_saved_step = p, self.step
        if p is not None:
            self.log(f"[hpcft] checkpoint step {self.step} ({reason}) -> {p}")
            self.ctx.event("checkpoint", f"checkpoint at step {self.step} ({reason})", step=self.step, path=str(p),
                           reason=reason)
        return p

    def stop_at_warning(self, epoch: int, step_in_epoch: int) -> None:
        """The time-limit warning arrived (all ranks agree): save where we are (unless this very step was just
        saved) and stop; entry.py exits 75 and the worker expires or requeues the job."""
        if not self.manager.enabled:  # nothing to save: stopping would only lose the work (a requeue restarts)
            if not self.warned_off:
                self.log("[hpcft] time-limit warning, but training.keep_checkpoints=off: nothing to save, training on")
                self.warned_off = True
            return
        path = self.last_saved if self.last_saved_step == self.step else self.save(epoch, step_in_epoch, "warning")
        self.metrics.close()
        dist.barrier()
        raise signals.SavedAtWarning(self.step, path)

    # ------------------------------------------------------------------------------------------------ loop
    def train(self) -> None:
        t = self.t
        bs, accum, world = int(t.batch_size), int(t.gradient_accumulation), self.ctx.world_size
        self.engine.train()
        self.evals_step = -1
        t_start = time.time()
        for epoch in range(self.start_epoch, self.epochs):
            if self.step >= self.total_steps:
                break
            batches = D.epoch_batches(len(self.train_set), int(t.seed), epoch, bs, accum, self.ctx.rank, world)
            first = self.skip if epoch == self.start_epoch else 0
            for k in range(first, len(batches)):
                if self.step >= self.total_steps:
                    break
                t0 = time.time()
                lr = self.engine.lr  # the lr this step uses
                loss, n_tok = self.train_step(batches[k])
                self.step += 1
                self.steps_this_run += 1
                self.log_step(epoch, k, len(batches), batches[k], loss, n_tok, lr, max(time.time() - t0, 1e-9))
                if ckpt.should_save(t.save_strategy, int(t.save_interval), self.step):
                    self.save(epoch, k + 1, "interval")
                faults.after_step(self.step)
                if self.warning.agreed() and self.step < self.total_steps:
                    self.stop_at_warning(epoch, k + 1)  # returns only when checkpoints are off
            else:  # the epoch ran to its end
                self.run_evals(epoch + 1)
                if ckpt.should_save(t.save_strategy, int(t.save_interval), self.step, epoch_end=epoch + 1):
                    self.save(epoch + 1, 0, "epoch")
                continue
            break  # max_steps reached inside the epoch
        self.train_time = time.time() - t_start
        if self.evals_step != self.step:  # stopped inside an epoch (max_steps): evaluate where training ended
            self.run_evals(round(self.step / self.spe, 4))

    # ------------------------------------------------------------------------------------------------ finish
    def finish(self) -> dict[str, Any]:
        """`final/` (HF format) and summary.json."""
        final = self.out / "final"
        hashes = dist.all_gather_object(params_hash(self.engine.module, self.ds_stage == 3))
        save_final(self.engine, self.tok, final, self.ctx)
        summary = make_summary(
            method=self.method, final_step=self.step, total_steps=self.total_steps, epochs=self.epochs,
            steps_this_run=self.steps_this_run, train_time_s=self.train_time, train_history=self.history,
            evals=self.evals, final_model=str(final), base_model=self.base_path, resumed_from=self.resumed_from,
            world_size=self.ctx.world_size, deepspeed_stage=self.ds_stage, param_hashes=hashes,
            trainable_params=self.n_train, total_params=self.n_total,
            method_info={"lora": self.method in ("lora", "qlora")})
        if self.ctx.is_main:
            write_summary(self.out, summary)
            self.log(f"[hpcft] done: step {self.step}, train loss {summary['final_train_loss']}, final model {final}")
        self.metrics.close()
        dist.barrier()
        return summary


def train(cfg, ctx) -> dict[str, Any]:
    recipe = CausalLMRecipe(cfg, ctx)
    recipe.setup()
    recipe.resume()
    recipe.train()
    return recipe.finish()


def save_final(engine, tok, final: Path, ctx) -> None:
    """`final/` in HF format (full model or peft adapter, + tokenizer), written atomically on the main rank.
    Under ZeRO-3 every rank holds only its partition of each weight (the module's own tensors are empty), so the
    full weights are gathered first (a collective: every rank calls this)."""
    state = engine.zero3_state_dict()
    if ctx.is_main:
        tmp = ckpt.staging_for(final)
        kwargs = {"state_dict": state} if state is not None else {}
        engine.module.save_pretrained(str(tmp), safe_serialization=True, **kwargs)
        tok.save_pretrained(str(tmp))
        ckpt.publish_dir(tmp, final)
    dist.barrier()
