"""method=t2i_lora: LoRA on the UNet of a Stable-Diffusion-style model (diffusers) from image/caption pairs.

Loss: noise-prediction MSE (epsilon, or v if the scheduler predicts v) on VAE latents at random timesteps, text
conditioning from the frozen CLIP text encoder. Only the UNet's LoRA adapters train (unet.add_adapter).
After each epoch: noise-prediction MSE on validation/test at fixed timesteps and noise, and sample images under
<output_dir>/samples/epoch-N/. final/ holds pytorch_lora_weights.safetensors in the format
`StableDiffusionPipeline.load_lora_weights` reads. model.source=config builds the tiny model once into base/.

Several processes (torchrun, or a Slurm job with tasks_per_node * nodes > 1): torch DDP over the UNet, whose only
trainable parameters are the LoRA adapters (gloo on CPU, nccl on GPU). Every optimizer step takes
batch_size * gradient_accumulation images per rank from one shuffled order shared by all ranks (rank r takes the
r-th slice of each micro-batch; the order is padded by wrapping so every rank gets full batches). Evaluation is
sharded and summed over ranks; samples, checkpoints, final/, metrics and summary are written by rank 0. DeepSpeed
is not used here (hpcft.train.method_checks refuses deepspeed.stage for t2i_lora).
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from hpcft.train.context import RunContext
from hpcft.train.metrics import MetricsWriter

LORA_FILE = "pytorch_lora_weights.safetensors"


# ------------------------------------------------------------------------------------------------ the base model

def tiny_clip_tokenizer(max_length: int):
    """A CLIPTokenizer with a byte-level vocabulary written here (every byte, alone and word-final), no merges."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    vocab: Dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = max_length
    return tok


def _arch(model_cfg: Any) -> Dict[str, Any]:
    a = model_cfg.arch
    return dict(OmegaConf.to_container(a, resolve=True) if hasattr(a, "keys") else a)


def build_base(model_cfg: Any, output_dir: Path, seed: int = 42, is_main: bool = True) -> str:
    """A diffusers folder (unet/ vae/ text_encoder/ tokenizer/ scheduler/) to load the base model from."""
    if model_cfg.source == "pretrained":
        return str(model_cfg.path)
    base = Path(output_dir) / "base"
    if (base / "model_index.json").exists() or not is_main:
        return str(base)
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    arch = _arch(model_cfg)
    te_kw = dict(arch["text_encoder"])
    tok = tiny_clip_tokenizer(int(te_kw.get("max_position_embeddings", 77)))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                                **te_kw))
    unet = UNet2DConditionModel(**arch["unet"])
    vae = AutoencoderKL(**arch["vae"])
    sched_kw = dict(arch.get("scheduler") or {})
    sched_kw.setdefault("beta_schedule", "scaled_linear")
    sched_kw.setdefault("clip_sample", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scheduler = DDPMScheduler(**sched_kw)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tok, unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    tmp = base.with_name("base.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    tmp.rename(base)
    return str(base)


def load_components(path: str, dtype: Any = None) -> Dict[str, Any]:
    """tokenizer, text_encoder, vae, unet, noise_scheduler of a diffusers folder (or hub id)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"dtype": dtype} if dtype is not None else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(path, subfolder="tokenizer"),
            "text_encoder": CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **kw),
            "vae": AutoencoderKL.from_pretrained(path, subfolder="vae", **({"torch_dtype": dtype} if dtype else {})),
            "unet": UNet2DConditionModel.from_pretrained(path, subfolder="unet",
                                                         **({"torch_dtype": dtype} if dtype else {})),
            "noise_scheduler": DDPMScheduler.from_pretrained(path, subfolder="scheduler"),
        }


def make_pipeline(c: Dict[str, Any]):
    """A StableDiffusionPipeline over the (possibly LoRA-equipped) components, sampling with DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                       unet=c["unet"], scheduler=DDIMScheduler.from_config(c["noise_scheduler"].config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(path: str, lora_dir: Optional[str] = None, dtype: Any = None):
    """A pipeline from a base folder, with the LoRA weights of a finished run loaded when lora_dir is given."""
    pipe = make_pipeline(load_components(path, dtype))
    if lora_dir:
        pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE)
    return pipe


# ------------------------------------------------------------------------------------------------------- data

def load_images(path: str, resolution: int):
    """(pixels [N,3,R,R] in [-1,1], captions) for an image_caption JSONL (images resized + centre-cropped)."""
    import numpy as np
    import torch
    from PIL import Image

    from hpcft.train.preference_data import load_image_captions

    recs = load_image_captions(path)
    pix = []
    for r in recs:
        img = Image.open(r["image"]).convert("RGB")
        w, h = img.size
        s = resolution / min(w, h)
        img = img.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        pix.append(torch.from_numpy(a).permute(2, 0, 1))
    return torch.stack(pix), [r["caption"] for r in recs]


# --------------------------------------------------------------------------------------------------- training

class T2ITrainer:
    def __init__(self, cfg: DictConfig, ctx: RunContext):
        import torch

        self.cfg, self.ctx = cfg, ctx
        self.m, self.t = cfg.method, cfg.training
        self.out = Path(cfg.output_dir)
        self.device = torch.device("cuda", ctx.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", enabled=ctx.is_main)
        self.world, self.rank = int(ctx.world_size), int(ctx.rank)
        self.ddp = None  # the DDP-wrapped UNet when world > 1 (training forwards go through it)

    # -- helpers
    def log(self, rec: Dict[str, Any]) -> None:
        self.metrics.write(rec)

    def autocast(self):
        import torch

        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.t.precision)
        return torch.autocast(self.device.type, dtype=dt, enabled=dt is not None)

    def encode_text(self, captions: List[str]):
        import torch

        tok = self.c["tokenizer"]
        ids = tok(captions, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.c["text_encoder"](ids)[0]

    def latents(self, pixels, generator=None):
        import torch

        vae = self.c["vae"]
        with torch.no_grad():
            dist = vae.encode(pixels.to(self.device, dtype=vae.dtype)).latent_dist
            z = dist.sample(generator=generator) if generator is not None else dist.sample()
        return z.float() * vae.config.scaling_factor

    def loss_on(self, pixels, captions, timesteps=None, noise_gen=None, unet=None):
        """Noise-prediction MSE of a batch (random timesteps/noise unless given); `unet` overrides the plain
        UNet (training passes the DDP wrapper)."""
        import torch
        import torch.nn.functional as F

        sch = self.c["noise_scheduler"]
        z = self.latents(pixels, noise_gen)
        noise = torch.randn(z.shape, generator=noise_gen, device="cpu").to(self.device) if noise_gen is not None \
            else torch.randn_like(z)
        if self.m.noise_offset and noise_gen is None:
            noise = noise + self.m.noise_offset * torch.randn(z.shape[0], z.shape[1], 1, 1, device=z.device)
        if timesteps is None:
            timesteps = torch.randint(0, sch.config.num_train_timesteps, (z.shape[0],), device=self.device)
        timesteps = timesteps.to(self.device).long()
        noisy = sch.add_noise(z, noise, timesteps)
        target = sch.get_velocity(z, noise, timesteps) if sch.config.prediction_type == "v_prediction" else noise
        cond = self.encode_text(captions)
        dtype = self.c["unet"].dtype
        unet = unet if unet is not None else self.c["unet"]
        with self.autocast():
            pred = unet(noisy.to(dtype), timesteps, cond.to(dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    # -- setup
    def setup(self) -> None:
        import torch
        from peft import LoraConfig

        from hpcft.train.modeling import torch_dtype

        from hpcft.train import distributed as dist

        t, m = self.t, self.m
        torch.manual_seed(t.seed)
        if self.ctx.is_main:
            build_base(self.cfg.model, self.out, t.seed, True)
        dist.barrier()  # other ranks load base/ once the main rank has written it
        self.base = build_base(self.cfg.model, self.out, t.seed, False)
        dtype = torch_dtype(self.cfg.model.dtype)
        self.c = load_components(self.base, dtype if dtype != torch.float32 else None)
        for k in ("text_encoder", "vae", "unet"):
            self.c[k].requires_grad_(False)
            self.c[k].to(self.device)
        self.c["text_encoder"].eval()
        self.c["vae"].eval()
        lo = m.lora
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.c["unet"].add_adapter(LoraConfig(r=int(lo.rank), lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                                                  init_lora_weights="gaussian",
                                                  target_modules=list(lo.target_modules)))
        self.params = [p for p in self.c["unet"].parameters() if p.requires_grad]
        for p in self.params:  # LoRA weights train in fp32 even on a bf16/fp16 base
            p.data = p.data.float()
        self.train_pix, self.train_caps = load_images(self.cfg.data.train, m.resolution)
        self.evals = {s: load_images(self.cfg.data[s], m.resolution) for s in ("validation", "test")
                      if self.cfg.data.get(s)}
        n = len(self.train_caps)
        self.micro_per_epoch = math.ceil(n / (t.batch_size * self.world))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.gradient_accumulation)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.opt = torch.optim.AdamW(self.params, lr=t.learning_rate, weight_decay=t.weight_decay)
        from transformers import get_scheduler

        warm = int(math.ceil(t.warmup_ratio * self.total_steps)) if t.warmup_ratio > 0 else 0
        if t.lr_decay_ratio >= 1:
            self.sched = get_scheduler("constant_with_warmup", self.opt, num_warmup_steps=warm)
        else:
            self.sched = get_scheduler("cosine_with_min_lr", self.opt, num_warmup_steps=warm,
                                       num_training_steps=self.total_steps,
                                       scheduler_specific_kwargs={"min_lr_rate": t.lr_decay_ratio})
        self.step = 0
        self.start_epoch = 0
        n_lora = sum(p.numel() for p in self.params)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP syncs only parameters that require grad: the LoRA adapters (broadcast from rank 0 here)
            self.ddp = DDP(self.c["unet"], device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None,
                           find_unused_parameters=False)
            self.reseed_rank(0)
        self.say(f"base {self.base}; {n} train images; {self.total_steps} steps ({self.steps_per_epoch}/epoch); "
                 f"{n_lora} LoRA parameters; device {self.device}; world {self.world}")

    def reseed_rank(self, step: int) -> None:
        """Different noise/timesteps on each rank (the LoRA init before this was the same everywhere)."""
        import torch

        if self.world > 1:
            torch.manual_seed(int(self.t.seed) + 100003 * self.rank + 7919 * int(step) + 1)

    def micro_indices(self, order, mi: int) -> List[int]:
        """This rank's image indices of micro-batch mi in the epoch's order (padded by wrapping when world > 1)."""
        bs, w = int(self.t.batch_size), self.world
        lo = (mi * w + self.rank) * bs
        if w == 1:
            return order[lo:lo + bs].tolist()
        n = len(order)
        return [int(order[i % n]) for i in range(lo, lo + bs)]

    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            print(f"[t2i_lora] {msg}", flush=True)

    # -- checkpoints
    def lora_state(self):
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.c["unet"]).items()}

    def save_lora(self, directory: Path) -> None:
        from diffusers import StableDiffusionPipeline

        # peft key format (lora_A/lora_B), which load_lora_weights reads for linear and conv layers alike
        StableDiffusionPipeline.save_lora_weights(save_directory=str(directory),
                                                  unet_lora_layers=self.lora_state(),
                                                  weight_name=LORA_FILE, safe_serialization=True)

    def save_checkpoint(self, epoch_done: int) -> None:
        import torch
        from safetensors.torch import save_file

        if not self.ctx.is_main:
            return
        ckroot = self.out / "checkpoints"
        d = ckroot / f"checkpoint-{self.step}"
        d.mkdir(parents=True, exist_ok=True)
        save_file(self.lora_state(), str(d / "adapter.safetensors"))
        torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                    "rng": torch.get_rng_state()}, d / "optimizer.pt")
        (d / "trainer_state.json").write_text(json.dumps({"step": self.step, "epoch": epoch_done,
                                                          "world_size": self.world}))
        keep = str(self.t.keep_checkpoints)
        if keep.isdigit():
            cks = sorted(ckroot.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in cks[:-int(keep)]:
                shutil.rmtree(old, ignore_errors=True)
        self.say(f"checkpoint {d}")
        self.ctx.event("checkpoint", f"checkpoint at step {self.step}", step=self.step, path=str(d))

    def maybe_resume(self) -> None:
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        r = self.t.resume_from
        if r is None:
            return
        if r == "latest":
            cks = sorted((self.out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
            if not cks:
                return
            d = cks[-1]
        else:
            d = Path(str(r))
        set_peft_model_state_dict(self.c["unet"], load_file(str(d / "adapter.safetensors")))
        st = torch.load(d / "optimizer.pt", weights_only=False)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        torch.set_rng_state(st["rng"])
        state = json.loads((d / "trainer_state.json").read_text())
        if int(state.get("world_size", self.world)) != self.world:
            raise ValueError(f"checkpoint {d} was written with world_size={state['world_size']}, this run has "
                             f"{self.world}; resume with the same number of processes")
        self.step = int(state["step"])
        self.start_epoch = self.step // self.steps_per_epoch
        self.reseed_rank(self.step)
        self.say(f"resumed from {d} at step {self.step}")

    # -- evaluation and samples
    def evaluate(self, split: str) -> Dict[str, float]:
        """Mean noise-prediction MSE over batches at 4 fixed timesteps with fixed noise. With several ranks each
        evaluates its shard (every world-th batch) and the sums are added up over ranks."""
        import torch

        from hpcft.train import distributed as dist

        pix, caps = self.evals[split]
        unet = self.c["unet"]
        unet.eval()
        g = torch.Generator().manual_seed(self.t.seed + 100003 * self.rank)
        T = self.c["noise_scheduler"].config.num_train_timesteps
        bs = int(self.t.batch_size)
        total, count = 0.0, 0
        with torch.no_grad():
            for k in range(4):  # 4 fixed timesteps spread over the schedule, fixed noise
                ts = torch.full((len(caps),), int((k + 0.5) * T / 4))
                for b, i in enumerate(range(0, len(caps), bs)):
                    if b % self.world != self.rank:
                        continue
                    total += self.loss_on(pix[i:i + bs], caps[i:i + bs], ts[i:i + bs], g).item()
                    count += 1
        total, count = dist.all_reduce_sum([total, float(count)])
        unet.train()
        return {"loss": total / max(count, 1.0)}

    def samples(self, epoch: int) -> List[str]:
        import torch

        m = self.m
        if m.num_sample_images <= 0 or not self.ctx.is_main:
            return []
        prompts = list(m.sample_prompts) or self.train_caps[:1]
        d = self.out / "samples" / f"epoch-{epoch}"
        d.mkdir(parents=True, exist_ok=True)
        pipe = make_pipeline(self.c)
        unet = self.c["unet"]
        unet.eval()
        paths = []
        for i in range(m.num_sample_images):
            prompt = prompts[i % len(prompts)]
            g = torch.Generator(device="cpu").manual_seed(self.t.seed + i)
            with torch.no_grad(), self.autocast():
                img = pipe(prompt, num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                           height=m.resolution, width=m.resolution, generator=g).images[0]
            p = d / f"{i:02d}.png"
            img.save(p)
            paths.append(str(p))
        (d / "prompts.json").write_text(json.dumps({Path(p).name: prompts[i % len(prompts)]
                                                    for i, p in enumerate(paths)}, indent=1))
        unet.train()
        return paths

    # -- the loop
    def run(self) -> Dict[str, Any]:
        import torch

        from hpcft.train import distributed as dist

        started = time.time()
        self.setup()
        self.maybe_resume()
        t = self.t
        unet = self.c["unet"]
        unet.train()
        n = len(self.train_caps)
        history: List[Dict[str, Any]] = []
        last_evals: Dict[str, Dict[str, float]] = {}
        sample_paths: List[str] = []
        t0 = time.time()
        for epoch in range(self.start_epoch, self.epochs):
            if self.step >= self.total_steps:
                break
            g = torch.Generator().manual_seed(t.seed + epoch)
            order = torch.randperm(n, generator=g)
            skip = (self.step - epoch * self.steps_per_epoch) * t.gradient_accumulation  # resume mid-epoch
            micro = 0
            acc_loss = 0.0
            self.opt.zero_grad(set_to_none=True)
            for mi in range(self.micro_per_epoch):
                if mi < skip:
                    continue
                idx = self.micro_indices(order, mi)
                last_micro = (micro + 1) % t.gradient_accumulation == 0 or mi == self.micro_per_epoch - 1
                # DDP all-reduces the LoRA gradients on the last micro-batch of an optimizer step only
                sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else contextlib.nullcontext()
                with sync:
                    loss = self.loss_on(self.train_pix[idx], [self.train_caps[i] for i in idx], unet=self.ddp)
                    (loss / t.gradient_accumulation).backward()
                acc_loss += loss.item() / t.gradient_accumulation
                micro += 1
                if not last_micro:
                    continue
                if self.world > 1:
                    acc_loss = dist.all_reduce_sum([acc_loss])[0] / self.world  # the mean over ranks
                gn = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else 1e9)
                lr = self.sched.get_last_lr()[0]
                self.opt.step()
                self.sched.step()
                self.opt.zero_grad(set_to_none=True)
                self.step += 1
                rec = {"type": "train", "step": self.step, "loss": acc_loss, "grad_norm": float(gn), "lr": lr,
                       "epoch": epoch + (mi + 1) / self.micro_per_epoch}
                history.append(rec)
                acc_loss = 0.0
                if self.step % t.log_interval == 0 or self.step == 1:
                    self.log(rec)
                    self.say(f"step {self.step}/{self.total_steps} loss={rec['loss']:.4f} lr={lr:.3g} "
                             f"({time.time() - t0:.1f}s)")
                if t.save_strategy == "steps" and str(t.keep_checkpoints) != "off" and self.step % t.save_interval == 0:
                    self.save_checkpoint(epoch)
                if self.step >= self.total_steps:
                    break
            ep = epoch + 1
            for split in self.evals:
                r = self.evaluate(split)
                last_evals[split] = r
                self.log({"type": "eval", "split": split, "epoch": ep, "step": self.step, **r})
                self.say(f"eval {split} epoch {ep}: loss={r['loss']:.4f}")
            sample_paths = self.samples(ep)
            self.ctx.event("epoch", f"epoch {ep} evaluated at step {self.step}", epoch=ep, step=self.step,
                           **{f"{s}_{k}": v for s, r in last_evals.items() for k, v in r.items()})
            if t.save_strategy == "epoch" and str(t.keep_checkpoints) != "off" and ep % t.save_interval == 0:
                self.save_checkpoint(ep)
        final = self.out / "final"
        from trainers.causal_lm import params_hash

        hashes = dist.all_gather_object(params_hash(unet, False))
        if self.ctx.is_main:
            final.mkdir(parents=True, exist_ok=True)
            self.save_lora(final)
            self.c["tokenizer"].save_pretrained(str(final / "tokenizer"))
            (final / "hpcft_base.json").write_text(json.dumps({"base": self.base, "lora": LORA_FILE}) + "\n")
        summary = {
            "method": "t2i_lora",
            "steps": self.step,
            "epochs": self.epochs,
            "first_train": history[0] if history else {},
            "final_train": history[-1] if history else {},
            "final_metrics": {f"{s}_{k}": v for s, r in last_evals.items() for k, v in r.items()},
            "final_model": str(final),
            "base_model": self.base,
            "samples": sample_paths,
            "seconds": round(time.time() - started, 2),
            "final_step": self.step,
            "world_size": self.world,
            "deepspeed_stage": None,
            "param_hashes": hashes,  # sha256 of the LoRA weights on each rank: equal in a healthy DDP run
        }
        if self.ctx.is_main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
            self.say(f"done: {self.step} steps, LoRA weights in {final}")
        dist.barrier()
        return summary


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    from hpcft.train.method_checks import check_method

    from hpcft.train import distributed as dist

    check_method(cfg)  # refuses deepspeed.stage: this trainer is plain DDP
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    dist.init_distributed(ctx, deepspeed=False)  # a process group only when world_size > 1
    return T2ITrainer(cfg, ctx).run()
