"""Process groups and the DeepSpeed engine: who am I, how do ranks talk, and the few collectives the loop needs.

Rank, world size and the rendezvous come from the environment: torchrun (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) or Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; MASTER_ADDR/MASTER_PORT set by
the sbatch script). `RunContext.from_env` reads them; `init_distributed(ctx)` turns them into a process group.
On CPU the backend is gloo and DeepSpeed uses its `cpu` accelerator.
"""

from __future__ import annotations

import os
import socket
from typing import Any


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def use_deepspeed(cfg: Any, ctx: Any) -> bool:
    """DeepSpeed wraps the model when a ZeRO stage is configured or when there is more than one process."""
    return cfg.deepspeed.get("stage") is not None or ctx.world_size > 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export_env(ctx: Any) -> None:
    """Make torch.distributed's env:// rendezvous work for torchrun, Slurm and a lone process alike."""
    env = os.environ
    env["RANK"] = str(ctx.rank)
    env["WORLD_SIZE"] = str(ctx.world_size)
    env["LOCAL_RANK"] = str(ctx.local_rank)
    env.setdefault("LOCAL_WORLD_SIZE", env.get("SLURM_NTASKS_PER_NODE", str(ctx.world_size)).split("(")[0])
    if ctx.world_size == 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    elif "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise RuntimeError("world_size > 1 needs MASTER_ADDR and MASTER_PORT in the environment "
                           "(torchrun sets them; under Slurm the sbatch script must export them)")


def prepare_deepspeed_import() -> None:
    """Select DeepSpeed's CPU accelerator when there is no GPU (must happen before `import deepspeed`)."""
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def skip_cpu_shm_op() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce op (~30 s, needs g++/ninja) that only serves
    inference all-reduce; training never uses it, so on CPU it is not built."""
    import importlib
    import sys

    try:
        importlib.import_module("deepspeed.comm.torch")
        # sys.modules, not `import ... as`: deepspeed.comm re-exports the name `torch` (the torch package)
        sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    except Exception as e:  # an older/newer DeepSpeed without this op: it builds it (slower start, same result)
        print(f"[hpcft] note: could not skip DeepSpeed's CPU shm op build ({type(e).__name__}: {e})", flush=True)


def init_distributed(ctx: Any, deepspeed: bool = True) -> bool:
    """Initialize the process group for this context (gloo on CPU, nccl on GPU). Returns True if one exists
    afterwards. Single-process runs without DeepSpeed need none (returns False)."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True
    if ctx.world_size <= 1 and not deepspeed:
        return False
    _export_env(ctx)
    backend = "nccl" if has_cuda() else "gloo"
    if has_cuda():
        torch.cuda.set_device(ctx.local_rank)
    if deepspeed:
        prepare_deepspeed_import()
        if not has_cuda():
            skip_cpu_shm_op()
        import deepspeed as ds

        ds.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        dist.init_process_group(backend=backend)
    return True


def device(ctx: Any):
    import torch

    return torch.device(f"cuda:{ctx.local_rank}") if has_cuda() else torch.device("cpu")


def is_dist() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (identity in one process)."""
    import torch
    import torch.distributed as dist

    if not is_dist():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_reduce_max(value: float) -> float:
    """The largest value over ranks (identity in one process)."""
    import torch
    import torch.distributed as dist

    if not is_dist():
        return float(value)
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_gather_object(obj: Any) -> list[Any]:
    import torch.distributed as dist

    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def initialize_engine(model, optimizer, scheduler, ds_config: dict):
    """deepspeed.initialize with a torch optimizer and our LambdaLR (stepped by the engine)."""
    prepare_deepspeed_import()
    import deepspeed

    engine, opt, _, sched = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                 config=ds_config)
    return engine, opt, sched


def gathered(params, enabled: bool):
    """Context that gathers ZeRO-3 partitioned params (read-only) when enabled; a no-op otherwise."""
    import contextlib

    if not enabled:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
