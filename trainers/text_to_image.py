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
sharded and summed over ranks; samples, final/, metrics and summary are written by rank 0. DeepSpeed is not used
here (hpcft.config.methods refuses deepspeed.stage for t2i_lora).

Checkpoints (hpcft.train.checkpoint.CheckpointManager, atomic, `checkpoints/step-N/` + `latest`): the LoRA weights
(same file format as final/), optimizer + schedule state, every rank's RNG, and in state.json the data position.
Resume is exact: the noise, timesteps and latent samples of step s on rank r come from a generator seeded with
(seed, r, s) (`step_seed`), the epoch order from (seed, epoch), evaluation and samples run on a fork of the RNG, so
an interrupted-and-resumed run ends with the weights of an uninterrupted one. On the time-limit warning (SIGUSR1)
every rank saves at the same step and the run stops with SavedAtWarning (exit 75).

Launch: hpcft submit +experiment=t2i_lora_tiny   (or: python -m hpcft.train.entry --config RUN_DIR/config.yaml)
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
from hpcft.train.optim import adamw

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
    base = Path(output_dir) / "base"
    if model_cfg.source == "pretrained":
        if not (Path(str(model_cfg.path)) / "hpcft_base.json").is_file():
            return str(model_cfg.path)
        if is_main and not (base / "model_index.json").exists():  # a t2i asset: its LoRA fused into its base
            merge_lora_pipeline(str(model_cfg.path), base.with_name("base.tmp"))
            base.with_name("base.tmp").rename(base)
        return str(base)
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


def lora_base(lora_dir: str) -> str:
    """The base pipeline of a LoRA directory (final/ of a run, or a t2i model asset): hpcft_base.json's `base`,
    relative to the directory when it is not absolute (an asset carries its base in base/)."""
    base = json.loads((Path(lora_dir) / "hpcft_base.json").read_text())["base"]
    return str(Path(lora_dir) / base) if not Path(base).is_absolute() and (Path(lora_dir) / base).is_dir() else base


def merge_lora_pipeline(lora_dir: str, dest: Path) -> None:
    """The LoRA weights of `lora_dir` fused into its base: a plain diffusers pipeline directory (safetensors; the
    base's own training scheduler) that StableDiffusionPipeline.from_pretrained loads, and a further run trains on."""
    from diffusers import StableDiffusionPipeline

    c = load_components(lora_base(lora_dir))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                       unet=c["unet"], scheduler=c["noise_scheduler"], safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.load_lora_weights(lora_dir, weight_name=LORA_FILE)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    shutil.rmtree(dest, ignore_errors=True)
    pipe.save_pretrained(str(dest), safe_serialization=True)
    for cfg in Path(dest).glob("*/*.json"):  # diffusers records where each part was loaded from: not a dependency
        d = json.loads(cfg.read_text())
        if isinstance(d, dict) and d.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


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

def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of the noise, timesteps and latent samples of optimizer step `step` (0-based) on `rank`: a function
    of the position alone, so a resumed run draws exactly what an uninterrupted one would have."""
    return int(seed) + 100003 * int(rank) + 7919 * int(step) + 1


def check_resume_world(state: Dict[str, Any], world: int, path: Any) -> None:
    from hpcft.errors import ConfigError

    saved = int(state.get("world_size", world))
    if saved != world:
        raise ConfigError(f"checkpoint {path} was written by {saved} processes, this run has {world}: resume with "
                          f"the same number of processes (resources.nodes x resources.tasks_per_node), or start "
                          f"fresh with training.resume_from=null")


class T2ITrainer:
    """setup (model, data, optimizer, schedule, DDP, resume) -> run: epochs of train_step, save on the policy or
    the warning signal, evaluate + samples after each epoch -> finish (final/ and summary.json)."""

    def __init__(self, cfg: DictConfig, ctx: RunContext):
        import torch

        self.cfg, self.ctx = cfg, ctx
        self.m, self.t = cfg.method, cfg.training
        self.out = Path(cfg.output_dir)
        self.device = torch.device("cuda", ctx.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        self.metrics = MetricsWriter(self.out / "metrics.jsonl", enabled=ctx.is_main, cfg=cfg, job_id=ctx.job_id)
        self.world, self.rank = int(ctx.world_size), int(ctx.rank)
        self.ddp = None  # the DDP-wrapped UNet when world > 1 (training forwards go through it)
        # where training stands: optimizer steps done, and the next micro-batch of which epoch
        self.step, self.epoch, self.micro = 0, 0, 0
        self.evals: Dict[str, Dict[str, float]] = {}  # the last evaluation
        self.resumed_from: Optional[Path] = None
        self.warned = False  # said once that the warning signal is ignored (checkpoints off)

    # -- helpers
    def say(self, msg: str) -> None:
        if self.ctx.is_main:
            print(f"[t2i_lora] {msg}", flush=True)

    def autocast(self):
        import torch

        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.t.precision)
        return torch.autocast(self.device.type, dtype=dt, enabled=dt is not None)

    def keep_rng(self):
        """Evaluation and samples must not move the training RNG (resume exactness): they run on a fork of it."""
        import torch

        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def encode_text(self, captions: List[str]):
        import torch

        tok = self.c["tokenizer"]
        ids = tok(captions, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(self.device)
        with torch.no_grad():
            return self.c["text_encoder"](ids)[0]

    def latents(self, pixels, generator):
        import torch

        vae = self.c["vae"]
        with torch.no_grad():
            z = vae.encode(pixels.to(self.device, dtype=vae.dtype)).latent_dist.sample(generator=generator)
        return z.float() * vae.config.scaling_factor

    def loss_on(self, pixels, captions, gen, timesteps=None, unet=None):
        """Noise-prediction MSE of a batch; latent samples, noise (and, in training, timesteps and noise offset)
        drawn from the CPU generator `gen`. `unet` overrides the plain UNet (training passes the DDP wrapper)."""
        import torch
        import torch.nn.functional as F

        sch = self.c["noise_scheduler"]
        z = self.latents(pixels, gen)
        noise = torch.randn(z.shape, generator=gen).to(self.device)
        if timesteps is None:  # training
            if self.m.noise_offset:
                noise = noise + self.m.noise_offset * torch.randn(z.shape[0], z.shape[1], 1, 1,
                                                                  generator=gen).to(self.device)
            timesteps = torch.randint(0, sch.config.num_train_timesteps, (z.shape[0],), generator=gen)
        timesteps = timesteps.to(self.device).long()
        noisy = sch.add_noise(z, noise, timesteps)
        target = sch.get_velocity(z, noise, timesteps) if sch.config.prediction_type == "v_prediction" else noise
        cond = self.encode_text(captions)
        dtype = self.c["unet"].dtype
        unet = unet if unet is not None else self.c["unet"]
        with self.autocast():
            pred = unet(noisy.to(dtype), timesteps, cond.to(dtype)).sample
        return F.mse_loss(pred.float(), target.float())

    def micro_indices(self, order, mi: int) -> List[int]:
        """This rank's image indices of micro-batch mi in the epoch's order (padded by wrapping when world > 1)."""
        bs, w = int(self.t.batch_size), self.world
        lo = (mi * w + self.rank) * bs
        if w == 1:
            return order[lo:lo + bs].tolist()
        n = len(order)
        return [int(order[i % n]) for i in range(lo, lo + bs)]

    def epoch_order(self, epoch: int):
        """The shuffled order of an epoch, the same on every rank and in every attempt."""
        import torch

        return torch.randperm(len(self.train_caps), generator=torch.Generator().manual_seed(self.t.seed + epoch))

    # -- setup
    def setup(self) -> None:
        import torch

        from hpcft.train import checkpoint as ckpt
        from hpcft.train import distributed as dist
        from hpcft.train.lora import lora_config
        from hpcft.train.modeling import torch_dtype
        from hpcft.train.schedule import make_scheduler

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.c["unet"].add_adapter(lora_config(m, init_lora_weights="gaussian"))  # same init on every rank
        if t.get("gradient_checkpointing"):
            self.c["unet"].enable_gradient_checkpointing()
        self.params = [p for p in self.c["unet"].parameters() if p.requires_grad]
        for p in self.params:  # LoRA weights train in fp32 even on a bf16/fp16 base
            p.data = p.data.float()
        torch.manual_seed(int(t.seed) + 100003 * self.rank + 1)  # per-rank global RNG (LoRA dropout)

        self.train_pix, self.train_caps = load_images(self.cfg.data.train, m.resolution)
        self.eval_sets = {s: load_images(self.cfg.data[s], m.resolution) for s in ("validation", "test")
                          if self.cfg.data.get(s)}
        n = len(self.train_caps)
        self.micro_per_epoch = math.ceil(n / (t.batch_size * self.world))
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / t.gradient_accumulation)
        total = self.steps_per_epoch * t.epochs
        self.total_steps = min(total, t.max_steps) if t.max_steps else total
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.opt = adamw(self.params, lr=float(t.learning_rate), weight_decay=float(t.weight_decay))
        self.sched = make_scheduler(self.opt, self.total_steps, float(t.warmup_ratio), float(t.lr_decay_ratio))
        self.manager = ckpt.CheckpointManager(self.out / "checkpoints", t.keep_checkpoints, is_main=self.ctx.is_main,
                                              barrier=dist.barrier, job_uuid=self.ctx.job_uuid)
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # DDP syncs only parameters that require grad: the LoRA adapters (broadcast from rank 0 here)
            self.ddp = DDP(self.c["unet"], device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None,
                           find_unused_parameters=False)
        self.resume(ckpt.resolve_resume(t.get("resume_from"), self.out, self.ctx.job_id, self.ctx.job_uuid))
        self.say(f"base {self.base}; {n} train images; {self.total_steps} steps ({self.steps_per_epoch}/epoch); "
                 f"{sum(p.numel() for p in self.params)} LoRA parameters; device {self.device}; world {self.world}")

    def resume(self, d: Optional[Path]) -> None:
        """LoRA weights, optimizer, schedule, this rank's RNG and the data position of checkpoint `d` (the same
        files on every rank; the RNG file is the rank's own). Last in setup: nothing may draw from the RNG after."""
        if d is None:
            return
        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from hpcft.train import checkpoint as ckpt

        state = ckpt.read_state(d)
        check_resume_world(state, self.world, d)
        unet = self.c["unet"]
        prefix = "unet."
        lora = {k[len(prefix):]: v for k, v in load_file(str(d / LORA_FILE)).items() if k.startswith(prefix)}
        if set(lora) != set(self.lora_state()):
            raise ValueError(f"checkpoint {d}: its LoRA weights do not match method.lora of this run")
        set_peft_model_state_dict(unet, lora)
        st = torch.load(d / "optimizer.pt", weights_only=False)
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        ckpt.load_rng(d / f"rng-rank{self.rank}.pt")
        self.step, self.epoch, self.micro = int(state["step"]), int(state["epoch"]), int(state["step_in_epoch"])
        self.evals = state.get("evals") or {}
        self.resumed_from = d
        self.say(f"resumed from {d} at step {self.step} (epoch {self.epoch}, micro-batch {self.micro})")

    # -- one optimizer step
    def train_step(self, order, micros: List[int], epoch: int) -> Dict[str, Any]:
        """Forward/backward over this step's micro-batches (DDP all-reduces on the last), clip, step."""
        import torch

        from hpcft.train import distributed as dist

        t = self.t
        gen = torch.Generator().manual_seed(step_seed(t.seed, self.rank, self.step))
        lr = float(self.opt.param_groups[0]["lr"])  # the lr this step uses
        loss_sum, seen = 0.0, []
        for j, mi in enumerate(micros):
            idx = self.micro_indices(order, mi)
            seen += idx
            last = j == len(micros) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                loss = self.loss_on(self.train_pix[idx], [self.train_caps[i] for i in idx], gen, unet=self.ddp)
                (loss / len(micros)).backward()
            loss_sum += loss.item() / len(micros)
        loss_sum = dist.all_reduce_sum([loss_sum])[0] / self.world  # the mean over ranks
        gn = torch.nn.utils.clip_grad_norm_(self.params, t.max_grad_norm if t.max_grad_norm > 0 else 1e9)
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        self.micro = micros[-1] + 1
        rec = {"type": "train", "step": self.step, "loss": loss_sum, "grad_norm": float(gn), "lr": lr,
               "epoch": round(epoch + self.micro / self.micro_per_epoch, 4)}
        if t.get("log_sample_ids"):
            rec["samples"] = [i for r in dist.all_gather_object(seen) for i in r]
        return rec

    # -- checkpoints
    def lora_state(self) -> Dict[str, Any]:
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(self.c["unet"]).items()}

    def save_lora(self, directory: Path) -> None:
        from diffusers import StableDiffusionPipeline

        # peft key format (lora_A/lora_B), which load_lora_weights reads for linear and conv layers alike
        StableDiffusionPipeline.save_lora_weights(save_directory=str(directory),
                                                  unet_lora_layers=self.lora_state(),
                                                  weight_name=LORA_FILE, safe_serialization=True)

    def save(self, reason: str) -> Optional[Path]:
        """A checkpoint at the current position (collective): LoRA weights in the pipeline format, optimizer and
        schedule (rank 0), each rank's RNG; published atomically by the CheckpointManager."""
        import torch

        from hpcft.train import checkpoint as ckpt

        def write(d: Path) -> None:
            if self.ctx.is_main:
                self.save_lora(d)
                torch.save({"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict()},
                           d / "optimizer.pt")
            ckpt.save_rng(d / f"rng-rank{self.rank}.pt")

        epoch, micro = (self.epoch + 1, 0) if reason == "epoch" else (self.epoch, self.micro)
        state = {"epoch": epoch, "step_in_epoch": micro, "total_steps": self.total_steps, "job_id": self.ctx.job_id,
                 "world_size": self.world, "method": "t2i_lora", "reason": reason, "evals": self.evals}
        path = self.manager.save(self.step, write, state)
        if path is not None:
            self.say(f"checkpoint ({reason}) {path}")
            self.ctx.event("checkpoint", f"checkpoint at step {self.step} ({reason})", step=self.step,
                           path=str(path), reason=reason)
        return path

    # -- evaluation and samples
    def evaluate(self, split: str) -> Dict[str, float]:
        """Mean noise-prediction MSE over batches at 4 fixed timesteps with fixed noise. With several ranks each
        evaluates its shard (every world-th batch) and the sums are added up over ranks."""
        import torch

        from hpcft.train import distributed as dist

        pix, caps = self.eval_sets[split]
        unet = self.c["unet"]
        unet.eval()
        g = torch.Generator().manual_seed(self.t.seed + 100003 * self.rank)
        T = self.c["noise_scheduler"].config.num_train_timesteps
        bs = int(self.t.batch_size)
        total, count = 0.0, 0
        with torch.no_grad(), self.keep_rng():
            for k in range(4):  # 4 fixed timesteps spread over the schedule, fixed noise
                ts = torch.full((len(caps),), int((k + 0.5) * T / 4))
                for b, i in enumerate(range(0, len(caps), bs)):
                    if b % self.world != self.rank:
                        continue
                    total += self.loss_on(pix[i:i + bs], caps[i:i + bs], g, ts[i:i + bs]).item()
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
            with torch.no_grad(), self.autocast(), self.keep_rng():
                img = pipe(prompt, num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
                           height=m.resolution, width=m.resolution, generator=g).images[0]
            p = d / f"{i:02d}.png"
            img.save(p)
            paths.append(str(p))
        (d / "prompts.json").write_text(json.dumps({Path(p).name: prompts[i % len(prompts)]
                                                    for i, p in enumerate(paths)}, indent=1))
        unet.train()
        return paths

    def end_epoch(self, ep: int) -> List[str]:
        """Evaluation, samples and the `epoch` event after epoch `ep` (1-based); returns the sample paths."""
        for split in self.eval_sets:
            r = self.evaluate(split)
            self.evals[split] = r
            self.metrics.write({"type": "eval", "split": split, "epoch": ep, "step": self.step, **r})
            self.say(f"eval {split} epoch {ep}: loss={r['loss']:.4f}")
        paths = self.samples(ep)
        self.ctx.event("epoch", f"epoch {ep} evaluated at step {self.step}", epoch=ep, step=self.step,
                       **{f"{s}_{k}": v for s, r in self.evals.items() for k, v in r.items()})
        return paths

    # -- the loop
    def run(self) -> Dict[str, Any]:
        from hpcft.train.checkpoint import should_save

        self.setup()
        t = self.t
        self.c["unet"].train()
        history: List[Dict[str, Any]] = []
        sample_paths: List[str] = []
        start_step, start_epoch, start_micro = self.step, self.epoch, self.micro
        accum = int(t.gradient_accumulation)
        t0 = time.time()
        try:
            with warning_flag() as flag:
                for epoch in range(start_epoch, self.epochs):
                    self.epoch, self.micro = epoch, (start_micro if epoch == start_epoch else 0)
                    order = self.epoch_order(epoch)
                    for first in range(self.micro, self.micro_per_epoch, accum):
                        if self.step >= self.total_steps:
                            break
                        rec = self.train_step(order, list(range(first, min(first + accum, self.micro_per_epoch))),
                                              epoch)
                        if self.step % t.log_interval == 0 or self.step in (1, self.total_steps):
                            history.append(rec)
                            self.metrics.write(rec)
                            self.say(f"step {self.step}/{self.total_steps} loss={rec['loss']:.4f} "
                                     f"lr={rec['lr']:.3g} ({time.time() - t0:.1f}s)")
                        self.at_step_boundary(flag)
                    sample_paths = self.end_epoch(epoch + 1)
                    if should_save(t.save_strategy, t.save_interval, self.step, epoch_end=epoch + 1):
                        self.save("epoch")
            return self.finish(history, sample_paths, self.step - start_step, time.time() - t0)
        finally:
            self.metrics.close()

    def at_step_boundary(self, flag: Any) -> None:
        """After every optimizer step: the fault seams, the save policy and the time-limit warning (a collective:
        every rank asks at the same step; on the warning all save the same checkpoint and stop together)."""
        from hpcft.train import faults
        from hpcft.train.checkpoint import should_save
        from hpcft.train.signals import SavedAtWarning

        faults.after_step(self.step)
        t = self.t
        path = self.save("interval") if should_save(t.save_strategy, t.save_interval, self.step) else None
        if not flag.agreed():
            return
        if self.manager.enabled:
            raise SavedAtWarning(self.step, path or self.save("warning"))
        if not self.warned:
            self.say("time-limit warning, but training.keep_checkpoints=off: nothing to save, training on")
            self.warned = True

    def finish(self, history: List[Dict[str, Any]], sample_paths: List[str], steps_this_run: int,
               train_time: float) -> Dict[str, Any]:
        """final/ (LoRA weights for load_lora_weights, tokenizer, base reference; written atomically by rank 0) and
        summary.json."""
        from hpcft.train import checkpoint as ckpt
        from hpcft.train import distributed as dist
        from hpcft.train.modeling import params_hash
        from hpcft.train.summary import make_summary, write_summary

        unet = self.c["unet"]
        final = self.out / "final"
        hashes = dist.all_gather_object(params_hash(unet))
        if self.ctx.is_main:
            tmp = ckpt.staging_for(final)
            self.save_lora(tmp)
            self.c["tokenizer"].save_pretrained(str(tmp / "tokenizer"))
            (tmp / "hpcft_base.json").write_text(json.dumps({"base": self.base, "lora": LORA_FILE}) + "\n")
            ckpt.publish_dir(tmp, final)
        summary = make_summary(
            method="t2i_lora", final_step=self.step, total_steps=self.total_steps, epochs=self.epochs,
            steps_this_run=steps_this_run, train_time_s=train_time, train_history=history, evals=self.evals,
            final_model=str(final), base_model=self.base, resumed_from=self.resumed_from, world_size=self.world,
            deepspeed_stage=None, param_hashes=hashes, trainable_params=sum(p.numel() for p in self.params),
            total_params=sum(p.numel() for p in unet.parameters()),
            method_info={"lora": True, "lora_file": LORA_FILE, "samples": sample_paths})
        if self.ctx.is_main:
            write_summary(self.out, summary)
            self.say(f"done: {self.step} steps, LoRA weights in {final}")
        dist.barrier()
        return summary


@contextlib.contextmanager
def warning_flag():
    """The time-limit warning flag (hpcft.train.signals) for the loop, with the previous SIGUSR1 handler restored
    afterwards (the trainer may run inside another program, e.g. a test). Outside the main thread no handler can be
    installed and the flag never rises."""
    import signal
    import threading

    from hpcft.train import signals

    if threading.current_thread() is not threading.main_thread():
        yield signals.WarningFlag()
        return
    before = signal.getsignal(signals.WARNING_SIGNAL)
    try:
        yield signals.install()
    finally:
        signal.signal(signals.WARNING_SIGNAL, before)


def train(cfg: DictConfig, ctx: RunContext) -> dict:
    from hpcft.train import distributed as dist
    from hpcft.config.methods import check_method

    check_method(cfg)  # refuses deepspeed.stage: this trainer is plain DDP
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    dist.init_distributed(ctx, deepspeed=False)  # a process group only when world_size > 1
    return T2ITrainer(cfg, ctx).run()
