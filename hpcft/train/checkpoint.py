"""Atomic training checkpoints under `<output_dir>/checkpoints/`.

Every trainer (causal LM, trl's reward/DPO/GRPO, text-to-image) saves through `CheckpointManager`:

Layout: `step-00000040/` (one per save) and `latest`, a text file naming the newest complete one. A save writes
into a staging dir (`step-X.tmp/`, or `checkpoint-X/` where transformers' Trainer writes its own files), then
`publish` writes `state.json` last, fsyncs everything, renames the staging dir to `step-X/` and replaces `latest`
through a temp file + os.replace, so a crash at any point leaves `latest` naming a complete checkpoint (or
absent). Stale staging dirs from a crash are removed by the next save and never read.

`state.json` says where training stood (step, epoch, step in epoch), why it was saved (interval, epoch, warning)
and whose it is (job id, the job's UUID, world size): a job that starts again in the same run directory (Slurm requeue
after a node failure or preemption, `hpcft resume`, a time-limit requeue) continues from `latest` of its own job,
never from another job's with the same integer id (another ledger sharing the runs root).

What goes into a checkpoint is up to the trainer (the `write` callback); `save_rng`/`load_rng` and
`save_trainable`/`load_trainable` are the usual pieces.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"  # written last; its presence marks a complete checkpoint
LATEST = "latest"
HF_STAGING = "checkpoint-*"  # where transformers' Trainer writes a checkpoint before it is published


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file and directory under path (so a rename after it publishes durable data)."""
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with open(os.path.join(dirpath, f), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(dirpath))


def staging_for(final: Path) -> Path:
    """An empty `<final>.tmp` next to `final` to write a directory into before `publish_dir` (main rank)."""
    tmp = Path(final).with_name(Path(final).name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> Path:
    """Make a fully written directory `final` in one step (fsync, then rename over the old one): a crash leaves
    either the old `final` or none, never half of a new one. Used for every trainer's `final/`."""
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(final.parent)
    return final


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _is_complete(d: Path) -> bool:
    return d.is_dir() and not d.name.endswith(".tmp") and (d / STATE_FILE).is_file()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((d for d in root.glob("step-*") if _is_complete(d)), key=lambda d: d.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint `latest` names; if that file is missing or points nowhere, the newest complete one."""
    root = Path(root)
    f = root / LATEST
    if f.is_file():
        d = root / f.read_text().strip()
        if _is_complete(d):
            return d
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    return json.loads((Path(ckpt_dir) / STATE_FILE).read_text())


def resolve_resume(resume_from: str | None, output_dir: Path, job_id: int | None = None,
                   job_uuid: str | None = None) -> Path | None:
    """The checkpoint to resume from: None (`resume_from` null: always start fresh), `latest` (the default: this
    run directory's newest complete checkpoint, None if it has none yet) or a directory.

    With `latest`, a checkpoint of another job is refused rather than silently continued (resuming from it must be
    asked for by its path): see `check_owner`."""
    if not resume_from:
        return None
    if str(resume_from) == "latest":
        found = latest_checkpoint(Path(output_dir) / "checkpoints")
        if found is not None and (job_id is not None or job_uuid is not None):
            check_owner(found, Path(output_dir), job_id, job_uuid)
        return found
    d = Path(os.path.expanduser(str(resume_from)))
    if (d / LATEST).is_file() or d.name == "checkpoints":  # a checkpoints root was given
        found = latest_checkpoint(d)
        if found is not None:
            return found
    if not _is_complete(d):
        from hpcft.errors import ConfigError

        raise ConfigError(f"training.resume_from={resume_from}: not a complete checkpoint (no {STATE_FILE}); "
                          "use training.resume_from=latest or a checkpoints/step-XXXXXXXX directory")
    return d


def check_owner(found: Path, output_dir: Path, job_id: int | None, job_uuid: str | None) -> None:
    """ConfigError unless checkpoint `found` is the job's own. A job with an identity (`job_uuid`)
    resumes a checkpoint carrying the same UUID; one without a UUID (written by an older hpcft) only when its integer
    job id AND the run directory's identity file (job.json, hpcft.rundir.identity) both say it is this job. A job
    without an identity (made before the ledger recorded one) compares the integer id, as before."""
    from hpcft.errors import ConfigError
    from hpcft.rundir.identity import read_identity

    state = read_state(found)
    owner, owner_uuid = state.get("job_id"), state.get("job_uuid")
    hint = f"use another output_dir, or training.resume_from={found} to start from it"
    if job_uuid is not None and owner_uuid is not None:
        if owner_uuid != job_uuid:
            raise ConfigError(f"output_dir {output_dir} holds checkpoints of another job (job {owner}, {owner_uuid}), "
                              f"not of this job {job_id} ({job_uuid}); {hint}")
        return
    if owner is not None and job_id is not None and int(owner) != int(job_id):
        raise ConfigError(f"output_dir {output_dir} holds checkpoints of job {owner}, not of job {job_id}; {hint}")
    if job_uuid is not None:  # a checkpoint without a UUID: the run directory must be this job's too
        ident = read_identity(output_dir) or {}
        if owner is None or ident.get("uuid") != job_uuid or ident.get("job_id") != int(owner):
            raise ConfigError(f"output_dir {output_dir} holds checkpoints without a job identity (job {owner}) and "
                              f"its job.json does not name this job {job_id} ({job_uuid}); {hint}")


def parse_keep(keep: Any) -> int | None:
    """keep_checkpoints -> 0 (off), None (all) or N."""
    k = str(keep).strip().lower()
    if k == "off":
        return 0
    if k == "all":
        return None
    return int(k)


def should_save(strategy: str, interval: int, step: int, epoch_end: int | None = None) -> bool:
    """The one save policy: `steps` saves after every `interval`-th optimizer step; `epoch` after every
    `interval`-th epoch (`epoch_end` is the number of the epoch that just ended, None inside an epoch)."""
    if strategy == "steps":
        return epoch_end is None and step > 0 and step % int(interval) == 0
    return epoch_end is not None and epoch_end % int(interval) == 0


class CheckpointManager:
    """Saves checkpoints atomically and applies the retention policy (`off` | `all` | `N`).

    `save(step, write, state)` stages, writes and publishes (the causal-LM and text-to-image trainers);
    `publish(staging, step, state)` publishes a directory someone else wrote (transformers' Trainer)."""

    def __init__(self, root: Path, keep: Any = "all", is_main: bool = True,
                 barrier: Callable[[], None] | None = None, job_uuid: str | None = None):
        self.root = Path(root)
        self.job_uuid = job_uuid  # the job's identity, carried by every checkpoint's state (resolve_resume reads it)
        self.keep = parse_keep(keep)
        self.is_main = is_main
        self.barrier = barrier or (lambda: None)

    @property
    def enabled(self) -> bool:
        return self.keep != 0

    def clean_stale(self) -> None:
        """Remove what a crash left half-written: staging dirs (`*.tmp`, transformers' `checkpoint-*`)."""
        if self.root.is_dir():
            for pattern in ("*.tmp", HF_STAGING):
                for d in self.root.glob(pattern):
                    if d.is_dir():
                        shutil.rmtree(d, ignore_errors=True)
                    else:
                        d.unlink(missing_ok=True)

    def save(self, step: int, write: Callable[[Path], None], state: dict[str, Any]) -> Path | None:
        """Run write(tmp_dir) on every rank (each writes its own files), then publish the result with `state`
        as step-XXXXXXXX + latest. Returns the final path (None if checkpoints are off)."""
        if not self.enabled:
            return None
        tmp = self.root / (step_dir_name(step) + ".tmp")
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            self.clean_stale()
            tmp.mkdir()
        self.barrier()
        with self.removed_on_failure(tmp):
            write(tmp)
            from hpcft.train import faults

            faults.in_save(step)
            return self.publish(tmp, step, state)

    @contextmanager
    def removed_on_failure(self, staging: Path) -> Iterator[None]:
        """On any failure inside, the main rank removes the staging dir (a full disk gets its space back; `latest`
        still names the last complete checkpoint) and a full disk is raised as DiskFull naming the file that could not
        be written (hpcft.train.diskfull)."""
        from hpcft.train.diskfull import as_disk_full

        try:
            yield
        except BaseException as e:
            full = as_disk_full(e, staging) if isinstance(e, Exception) else None  # before the space is freed
            if self.is_main:
                shutil.rmtree(staging, ignore_errors=True)
                (self.root / (LATEST + ".tmp")).unlink(missing_ok=True)
            if full is not None and full is not e:
                raise full from e
            raise

    def publish(self, staging: Path, step: int, state: dict[str, Any]) -> Path | None:
        """Make a fully written staging dir the checkpoint of `step` (collective: every rank calls it)."""
        if not self.enabled:
            return None
        final = self.root / step_dir_name(step)
        self.barrier()  # every rank has written its part
        if self.is_main:
            with self.removed_on_failure(staging):
                self._publish_main(staging, final, step, state)
        self.barrier()
        return final

    def _publish_main(self, staging: Path, final: Path, step: int, state: dict[str, Any]) -> None:
        ident = {"job_uuid": self.job_uuid} if self.job_uuid else {}
        write_json(staging / STATE_FILE, dict(state, step=step, saved_at=time.time(), **ident))
        fsync_tree(staging)
        if final.exists():  # the same step saved again (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_dir(self.root)
        pointer = self.root / (LATEST + ".tmp")
        from hpcft.train.diskfull import guard

        with guard(pointer), open(pointer, "w", encoding="utf-8") as f:
            f.write(final.name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer, self.root / LATEST)
        fsync_dir(self.root)
        self.apply_retention()

    def apply_retention(self) -> list[Path]:
        """Delete all but the newest N checkpoints; returns the deleted ones."""
        if self.keep is None or not self.root.is_dir():
            return []
        ckpts = list_checkpoints(self.root)
        doomed = ckpts[: max(len(ckpts) - self.keep, 0)]
        for d in doomed:
            shutil.rmtree(d, ignore_errors=True)
        return doomed


# ----------------------------------------------------------------------------------------------------- pieces

def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    st: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_rng(path: Path) -> None:
    import torch

    from hpcft.train.diskfull import guard

    with guard(path):
        torch.save(rng_state(), path)


def load_rng(path: Path) -> None:
    import torch

    set_rng_state(torch.load(path, weights_only=False))


def trainable_state(model) -> dict[str, Any]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model, path: Path) -> None:
    """The parameters that train (LoRA adapters, or all weights for full fine-tuning) as safetensors."""
    from safetensors.torch import save_file

    from hpcft.train.diskfull import guard

    with guard(path):
        save_file(trainable_state(model), str(path))


def load_trainable(model, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    state = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    unknown = [n for n in state if n not in params]
    if missing or unknown:
        raise RuntimeError(f"checkpoint {path} does not match the model: missing {missing[:3]}, "
                           f"unexpected {unknown[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))
