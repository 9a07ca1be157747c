"""Causal-LM training: pretrain, full fine-tuning, LoRA and QLoRA, one straight loop.

    setup (model, data, optimizer, schedule, DeepSpeed) -> resume -> epochs of steps -> eval -> final model

Reads top to bottom; the components live in `hpcft.train` (data, schedule, checkpoint, metrics, distributed).
Launch: hpcft submit method=lora data=tiny_sft   (or: python -m hpcft.train.entry --config RUN_DIR/config.yaml)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from hpcft.train import checkpoint as ckpt
from hpcft.train import data as D
from hpcft.train import distributed as dist
from hpcft.train.metrics import MetricsWriter, flush_std, peak_mem_mb, progress_line
from hpcft.train.schedule import make_scheduler

CRASH_ENV = "HPCFT_TEST_CRASH_AT_STEP"  # tests: SIGKILL this process right after that optimizer step


def log(ctx, msg: str) -> None:
    if ctx.is_main:
        print(msg, flush=True)


# ------------------------------------------------------------------------------------------------- the model

def disable_bnb_cpu_repack(model) -> int:
    """Pitfall 1: on CPUs with AVX512-BF16, a 4-bit forward under no_grad (eval) repacks the weights and LoRA
    gets no gradients afterwards. Turning the fast path off on every Linear4bit keeps QLoRA learning."""
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


def build_model(cfg, ctx):
    """(model, tokenizer) with only the weights that train requiring grad."""
    from hpcft.train.modeling import base_model_path, load_causal_lm, load_tokenizer

    method = cfg.method.name
    if ctx.is_main:
        base_model_path(cfg.model, ctx.output_dir, seed=cfg.training.seed, is_main=True)
    dist.barrier()
    path = base_model_path(cfg.model, ctx.output_dir, seed=cfg.training.seed, is_main=False)
    tok = load_tokenizer(cfg.model, path)
    quant = cfg.method.get("quantization") if method == "qlora" else None
    model = load_causal_lm(cfg.model, path, quantization=quant)
    if method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        disable_bnb_cpu_repack(model)
    if method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lc = cfg.method.lora
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(model, LoraConfig(
                r=int(lc.rank), lora_alpha=int(lc.alpha), lora_dropout=float(lc.dropout),
                target_modules=list(lc.target_modules), task_type="CAUSAL_LM"))
        if method == "qlora":
            disable_bnb_cpu_repack(model)
    if quant is None:
        model.to(dist.device(ctx))
    model.config.use_cache = False
    return model, tok, path


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases and norm weights (1-d tensors)."""
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or n.endswith(".bias") or "norm" in n.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def token_loss(logits, labels):
    """(mean next-token cross-entropy over label tokens, number of label tokens)."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    n = int((shift_labels != D.IGNORE).sum())
    total = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                            ignore_index=D.IGNORE, reduction="sum")
    return total / max(n, 1), n


def params_hash(model, zero3: bool) -> str:
    """sha256 of the trainable parameters (gathered under ZeRO-3): equal on every rank of a healthy run."""
    import torch

    h = hashlib.sha256()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with dist.gathered([p for _, p in named], zero3):
        for n, p in named:
            h.update(n.encode())
            h.update(p.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------- train

def train(cfg, ctx) -> dict[str, Any]:
    import torch

    t = cfg.training
    method = cfg.method.name
    out = Path(cfg.output_dir)
    ctx.output_dir = out
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    use_ds = dist.use_deepspeed(cfg, ctx)
    dist.init_distributed(ctx, deepspeed=use_ds)
    torch.manual_seed(int(t.seed))
    metrics = MetricsWriter(out / "metrics.jsonl", enabled=ctx.is_main)
    stage = cfg.deepspeed.get("stage")
    zero3 = use_ds and stage is not None and int(stage) == 3
    if use_ds and method == "qlora":
        raise ValueError("method=qlora with DeepSpeed is not supported here; use deepspeed=none and one process")

    # --- model and data
    model, tok, base_path = build_model(cfg, ctx)
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(ctx, f"[hpcft] method={method} model={cfg.model.name} params={n_total:,} trainable={n_train:,} "
             f"world={ctx.world_size} deepspeed={'zero' + str(stage or 0) if use_ds else 'off'}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    loss_on_all = method == "pretrain"
    splits: dict[str, D.Split] = {}
    for name in ("train", "validation", "test"):
        path = cfg.data.get(name)
        if path:
            splits[name] = D.load_split(path, cfg.data.format, tok, int(t.sequence_length), name, loss_on_all)
            sp = splits[name]
            metrics.write({"type": "data", "split": name, "samples": len(sp), "truncated": sp.truncated})
            if sp.truncated:
                msg = f"{sp.truncated} of {len(sp)} {name} samples longer than {t.sequence_length} tokens truncated"
                log(ctx, f"[hpcft] warning: {msg}")
                ctx.event("truncated", msg, split=name, samples=len(sp), truncated=sp.truncated)
    train_set = splits["train"]
    bs, accum, world = int(t.batch_size), int(t.gradient_accumulation), ctx.world_size
    spe = D.steps_per_epoch(len(train_set), bs, accum, world)
    if spe < 1:
        raise ValueError(f"data.train has {len(train_set)} samples: fewer than one optimizer step of "
                         f"batch_size*gradient_accumulation*world = {bs * accum * world}")
    if t.get("max_steps"):
        total_steps = int(t.max_steps)
        epochs = math.ceil(total_steps / spe)
    else:
        epochs = int(t.epochs)
        total_steps = epochs * spe

    # --- optimizer, schedule, engine
    opt = torch.optim.AdamW(param_groups(model, float(t.weight_decay)), lr=float(t.learning_rate))
    sched = make_scheduler(opt, total_steps, float(t.warmup_ratio), float(t.lr_decay_ratio))
    engine = None
    if use_ds:
        from hpcft.train.deepspeed_config import build_ds_config

        ds_conf = build_ds_config(cfg.deepspeed, t, world)
        engine, opt, sched = dist.initialize_engine(model, opt, sched, ds_conf)
        module = engine.module
    else:
        module = model
    dev = dist.device(ctx) if cfg.method.name != "qlora" else next(model.parameters()).device
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(t.precision))
    autocast = (lambda: torch.autocast(dev.type, dtype=amp_dtype)) if (amp_dtype and not use_ds) else nullcontext

    # --- resume
    manager = ckpt.CheckpointManager(out / "checkpoints", t.keep_checkpoints, is_main=ctx.is_main,
                                     barrier=dist.barrier)
    step, start_epoch, skip = 0, 0, 0
    resume = ckpt.resolve_resume(t.get("resume_from"), out)
    if resume is not None:
        state = json.loads((resume / ckpt.STATE_FILE).read_text())
        if int(state.get("world_size", world)) != world:
            raise ValueError(f"checkpoint {resume} was written with world_size={state['world_size']}, "
                             f"this run has {world}; resume with the same number of processes")
        if engine is not None:
            engine.load_checkpoint(str(resume), tag="deepspeed", load_optimizer_states=True,
                                   load_lr_scheduler_states=True)
        else:
            ckpt.load_trainable(model, resume / "trainable.safetensors")
            opt.load_state_dict(torch.load(resume / "optimizer.pt", weights_only=False))
            sched.load_state_dict(torch.load(resume / "scheduler.pt", weights_only=False))
            for g, lr in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                g["lr"] = lr
        step, start_epoch, skip = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        rng = resume / f"rng-rank{ctx.rank}.pt"
        if rng.is_file():
            ckpt.load_rng(rng)
        log(ctx, f"[hpcft] resumed from {resume}: step {step}, epoch {start_epoch}, step in epoch {skip}")

    def save(epoch: int, step_in_epoch: int) -> None:
        def write(d: Path) -> None:
            if engine is not None:
                engine.save_checkpoint(str(d), tag="deepspeed", save_latest=False)
            elif ctx.is_main:
                ckpt.save_trainable(model, d / "trainable.safetensors")
                torch.save(opt.state_dict(), d / "optimizer.pt")
                torch.save(sched.state_dict(), d / "scheduler.pt")
            ckpt.save_rng(d / f"rng-rank{ctx.rank}.pt")
            dist.barrier()
            if ctx.is_main:
                ckpt.write_json(d / ckpt.STATE_FILE, {
                    "step": step, "epoch": epoch, "step_in_epoch": step_in_epoch, "total_steps": total_steps,
                    "world_size": world, "method": method, "time": time.time()})

        p = manager.save(step, write)
        if p is not None:
            log(ctx, f"[hpcft] checkpoint step {step} -> {p}")
            ctx.event("checkpoint", f"checkpoint at step {step}", step=step, path=str(p))

    def evaluate(split: D.Split) -> dict[str, float]:
        (engine or model).eval()
        order = D.shard(range(len(split)), ctx.rank, world)
        real = [i < len(split) for i in range(len(order) * world)][ctx.rank::world]  # padding repeats samples
        loss_sum, n_tok = 0.0, 0
        with torch.no_grad():
            for b0 in range(0, len(order), bs):
                idx = order[b0:b0 + bs]
                keep = real[b0:b0 + bs]
                batch = D.collate([split.samples[i] for i in idx], pad_id)
                labels = batch["labels"].clone()
                labels[[j for j, k in enumerate(keep) if not k]] = D.IGNORE
                with autocast():
                    logits = (engine or model)(input_ids=batch["input_ids"].to(dev),
                                               attention_mask=batch["attention_mask"].to(dev)).logits
                mean, n = token_loss(logits, labels.to(dev))
                loss_sum += float(mean) * n
                n_tok += n
        loss_sum, n_tok = dist.all_reduce_sum([loss_sum, float(n_tok)])
        (engine or model).train()
        loss = loss_sum / max(n_tok, 1.0)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}

    def run_evals(epoch_label: float) -> dict[str, dict[str, float]]:
        res = {}
        for name in ("validation", "test"):
            if name in splits:
                r = evaluate(splits[name])
                res[name] = r
                metrics.write({"type": "eval", "split": name, "epoch": epoch_label, "step": step, **r})
        if res:
            log(ctx, f"[hpcft] eval epoch {epoch_label} step {step}: " + ", ".join(
                f"{k} loss {v['loss']:.4f} ppl {v['perplexity']:.2f}" for k, v in res.items()))
            ctx.event("epoch", f"epoch {epoch_label} evaluated", epoch=epoch_label, step=step,
                      **{f"{k}_{m}": v[m] for k, v in res.items() for m in ("loss", "perplexity")})
        return res

    # --- the loop
    crash_at = int(os.environ.get(CRASH_ENV, "0") or 0)
    (engine or model).train()
    last_loss: float | None = None
    evals: dict[str, dict[str, float]] = {}
    evals_step = -1
    t_start = time.time()
    steps_this_run = 0
    for epoch in range(start_epoch, epochs):
        if step >= total_steps:
            break
        batches = D.epoch_batches(len(train_set), int(t.seed), epoch, bs, accum, ctx.rank, world)
        first = skip if epoch == start_epoch else 0
        ended_early = False
        for k in range(first, len(batches)):
            if step >= total_steps:
                ended_early = True
                break
            t0 = time.time()
            micro = batches[k]
            lr = float(opt.param_groups[0]["lr"])  # the lr this step uses
            loss_acc, n_tok = 0.0, 0
            for mb in micro:
                batch = D.collate([train_set.samples[i] for i in mb], pad_id)
                n_tok += int(batch["attention_mask"].sum())
                with autocast():
                    logits = (engine or model)(input_ids=batch["input_ids"].to(dev),
                                               attention_mask=batch["attention_mask"].to(dev)).logits
                loss, _ = token_loss(logits, batch["labels"].to(dev))
                loss_acc += float(loss.detach()) / len(micro)
                if engine is not None:
                    engine.backward(loss)
                    engine.step()
                else:
                    (loss / len(micro)).backward()
            if engine is None:
                if float(t.max_grad_norm) > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   float(t.max_grad_norm))
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            step += 1
            steps_this_run += 1
            dt = max(time.time() - t0, 1e-9)
            last_loss = loss_acc
            if step % int(t.log_interval) == 0 or step == total_steps:
                loss_g, tok_g = dist.all_reduce_sum([loss_acc, float(n_tok)])
                last_loss = loss_g / world
                rec = {"type": "train", "step": step, "epoch": round(epoch + (k + 1) / len(batches), 4),
                       "loss": last_loss, "lr": lr, "tokens_per_s": tok_g / dt, "peak_mem_mb": peak_mem_mb()}
                if t.get("log_sample_ids"):
                    ids = [i for mb in micro for i in mb]
                    rec["samples"] = [i for r in dist.all_gather_object(ids) for i in r]
                metrics.write(rec)
                log(ctx, progress_line(step, total_steps, last_loss, lr, tok_g / dt, rec["epoch"]))
            if t.save_strategy == "steps" and step % int(t.save_interval) == 0:
                pos_epoch, pos_k = (epoch, k + 1) if k + 1 < len(batches) else (epoch, len(batches))
                save(pos_epoch, pos_k)
            if crash_at and step == crash_at:
                metrics.close()
                flush_std()
                os.kill(os.getpid(), signal.SIGKILL)
        if ended_early:
            break
        evals, evals_step = run_evals(epoch + 1), step
        if t.save_strategy == "epoch" and (epoch + 1) % int(t.save_interval) == 0:
            save(epoch + 1, 0)
    train_time = time.time() - t_start
    if evals_step != step:  # stopped inside an epoch (max_steps): evaluate where training ended
        evals, evals_step = run_evals(round(step / spe, 4)), step

    # --- final model (HF format) and summary
    final = out / "final"
    param_hash = params_hash(module, zero3)
    hashes = dist.all_gather_object(param_hash)
    save_final(module, tok, final, engine, zero3, ctx)
    summary = {
        "method": method, "final_step": step, "total_steps": total_steps, "epochs": epochs,
        "final_train_loss": last_loss, "eval": evals, "final_model": str(final), "base_model": base_path,
        "world_size": world, "deepspeed_stage": (int(stage) if stage is not None else (0 if use_ds else None)),
        "steps_this_run": steps_this_run, "train_time_s": round(train_time, 3),
        "steps_per_s": round(steps_this_run / train_time, 3) if train_time > 0 and steps_this_run else None,
        "param_hash": param_hash, "param_hashes": hashes, "resumed_from": str(resume) if resume else None,
        "trainable_params": n_train, "total_params": n_total,
    }
    if ctx.is_main:
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1))
        os.replace(tmp, out / "summary.json")
        log(ctx, f"[hpcft] done: step {step}, train loss {last_loss}, final model {final}")
    metrics.close()
    dist.barrier()
    return summary


def save_final(module, tok, final: Path, engine, zero3: bool, ctx) -> None:
    """`final/` in HF format (full model or peft adapter, + tokenizer), written atomically on the main rank.
    Under ZeRO-3 the partitioned weights are gathered first (pitfall 5)."""
    import shutil

    state = engine._zero3_consolidated_16bit_state_dict() if zero3 else None
    if ctx.is_main:
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        kwargs = {"state_dict": state} if state is not None else {}
        module.save_pretrained(str(tmp), safe_serialization=True, **kwargs)
        tok.save_pretrained(str(tmp))
        ckpt.fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    dist.barrier()
