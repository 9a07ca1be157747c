"""One thin wrapper over a plain torch model+optimizer or a DeepSpeed engine, so the training loop never branches
on DeepSpeed: forward, backward (per micro-batch), optimizer step (per optimizer step), train/eval, the lr, and
checkpoint state.

Plain torch: losses are scaled by 1/accumulation, gradients clipped at `max_grad_norm`, then optimizer and
scheduler step. DeepSpeed: `engine.backward` + `engine.step` on every micro-batch (DeepSpeed knows the accumulation
boundary, scales, clips and steps the scheduler itself).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

DS_TAG = "deepspeed"


class Engine:
    def __init__(self, model, optimizer, scheduler, *, device, ds_config: Optional[dict] = None,
                 max_grad_norm: float = 0.0, amp_dtype=None, is_main: bool = True):
        self.device = device
        self.max_grad_norm = float(max_grad_norm)
        self.is_main = is_main
        self.ds = None
        if ds_config is not None:
            from hpcft.train import distributed as dist

            self.ds, optimizer, scheduler = dist.initialize_engine(model, optimizer, scheduler, ds_config)
            self.module = self.ds.module
        else:
            self.module = model
        self.optimizer, self.scheduler = optimizer, scheduler
        self._amp_dtype = amp_dtype if self.ds is None else None  # DeepSpeed handles precision itself
        self._trainable: Optional[list] = None  # the parameters clipped (plain torch), listed at the first step

    # -------------------------------------------------------------------------------------------- compute
    def autocast(self):
        import torch

        return torch.autocast(self.device.type, dtype=self._amp_dtype) if self._amp_dtype else nullcontext()

    def __call__(self, **batch):
        with self.autocast():
            return (self.ds or self.module)(**{k: self.to_device(v) for k, v in batch.items()})

    def to_device(self, t):
        """A batch tensor on the compute device. To a GPU through pinned (page-locked) memory, asynchronously: the
        copy overlaps with the work still queued, and the loop collates the next batch meanwhile. On the CPU:
        the tensor itself."""
        if self.device.type == "cpu":
            return t
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t.to(self.device)

    def train(self) -> None:
        (self.ds or self.module).train()

    def eval(self) -> None:
        (self.ds or self.module).eval()

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def backward(self, loss, n_micro: int) -> None:
        """Backward of one micro-batch's mean loss (of `n_micro` micro-batches in this optimizer step)."""
        if self.ds is not None:
            self.ds.backward(loss)
            self.ds.step()
        else:
            (loss / n_micro).backward()

    def optimizer_step(self) -> None:
        """Close an optimizer step (plain torch: clip, step, schedule, zero grads; DeepSpeed: already done)."""
        if self.ds is not None:
            return
        import torch

        if self.max_grad_norm > 0:
            if self._trainable is None:  # the same parameters every step: not a walk over every module each time
                self._trainable = [p for p in self.module.parameters() if p.requires_grad]
            torch.nn.utils.clip_grad_norm_(self._trainable, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -------------------------------------------------------------------------------------------- state
    def save_state(self, d: Path) -> None:
        """Model (trainable weights), optimizer and scheduler into checkpoint dir `d` (collective under DeepSpeed)."""
        if self.ds is not None:
            self.ds.save_checkpoint(str(d), tag=DS_TAG, save_latest=False)
        elif self.is_main:
            import torch

            from hpcft.train import checkpoint as ckpt

            ckpt.save_trainable(self.module, d / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), d / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), d / "scheduler.pt")

    def load_state(self, d: Path) -> None:
        if self.ds is not None:
            self.ds.load_checkpoint(str(d), tag=DS_TAG, load_optimizer_states=True, load_lr_scheduler_states=True)
            return
        import torch

        from hpcft.train import checkpoint as ckpt

        ckpt.load_trainable(self.module, d / "trainable.safetensors")
        self.optimizer.load_state_dict(torch.load(d / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(d / "scheduler.pt", weights_only=False))
        for g, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
            g["lr"] = lr

    def zero3_state_dict(self) -> Optional[dict[str, Any]]:
        """The full 16-bit state dict gathered from ZeRO-3 partitions (collective), None otherwise."""
        if self.ds is None or self.ds.zero_optimization_stage() != 3:
            return None
        return self.ds._zero3_consolidated_16bit_state_dict()
