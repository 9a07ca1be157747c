"""What a publish copies of a job: its final model or a checkpoint (`Source`), staged as a Hugging Face model
(hpcft's own `trainable.safetensors` converted to a peft adapter or full weights, with a tokenizer), described
(kind, task, library, the base it needs) and, for an adapter, its base recorded or copied in as base/.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcft.errors import ConfigError, HpcftError
from hpcft.registry.files import SAFE, Say, copy_tree
from hpcft.registry.names import asset_at

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json", "spiece.model")
# what a transformers Trainer checkpoint holds besides the model (trl methods), and hpcft's own checkpoint files
NOT_MODEL = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|state\.json|trainer_state\.json|training_args\.bin"
                       r"|trainable\.safetensors|rng.*\.pth?|README\.md)$")


def model_files(d: Path) -> List[Tuple[str, Path]]:
    """(relative name, path) of the files a publish takes from a final model or checkpoint directory, sorted: no
    pickle (files.SAFE), no optimizer or trainer state, no card."""
    out = []
    for p in sorted(Path(d).rglob("*")):
        rel = p.relative_to(d).as_posix()
        if not p.is_file() or p.is_symlink() or not SAFE.match(p.name):
            continue
        if "/" not in rel and NOT_MODEL.match(p.name) and p.name != "trainable.safetensors":
            continue
        out.append((rel, p))
    return out


@dataclass
class Source:
    label: str  # final | step-00000040
    path: Path
    step: Optional[int]


def resolve_source(job, checkpoint: Optional[str]) -> Source:
    """What to publish of a job: its final model (default) or a checkpoint (`latest`, `step-N`, `N`)."""
    from hpcft.train.checkpoint import latest_checkpoint, list_checkpoints, read_state, step_dir_name

    out = Path(job.output_dir or "")
    if checkpoint in (None, "", "final"):
        final = out / "final"
        if not final.is_dir():
            raise ConfigError(f"job {job.id} has no final model (state {job.state}); publish a checkpoint with "
                              "--checkpoint latest or --checkpoint step-N")
        step = None
        try:
            step = json.loads((out / "summary.json").read_text()).get("final_step")
        except (OSError, ValueError):
            pass
        return Source("final", final, step)
    root = out / "checkpoints"
    have = [d.name for d in list_checkpoints(root)]
    if checkpoint == "latest":
        d = latest_checkpoint(root)
        if d is None:
            raise ConfigError(f"job {job.id} has no checkpoint; publish its final model (no --checkpoint)")
    else:
        m = re.fullmatch(r"(?:step-)?(\d+)", str(checkpoint))
        d = root / step_dir_name(int(m.group(1))) if m else None
        if d is None or d.name not in have:
            listed = ", ".join(have[-5:]) or "none"
            raise ConfigError(f"--checkpoint {checkpoint}: job {job.id} has no such complete checkpoint (newest: "
                              f"{listed}); use --checkpoint latest or step-N")
    return Source(d.name, d, int(read_state(d).get("step", int(d.name.split("-")[1]))))


def job_cfg(job) -> Dict[str, Any]:
    return dict(job.config or {})


def job_base(job) -> Optional[str]:
    """The base weights a job trained on: its run's base/ (a model built from a config, or a merged parent) or
    model.path."""
    base = Path(job.output_dir or "") / "base"
    if (base / "config.json").is_file():
        return str(base)
    return (job_cfg(job).get("model") or {}).get("path")


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _copy_tokenizer(job, dest: Path) -> None:
    """Tokenizer files for a checkpoint: from the run's final/ or base/, else the model's own."""
    out = Path(job.output_dir or "")
    model = job_cfg(job).get("model") or {}
    for cand in (out / "final", out / "base", model.get("tokenizer"), model.get("path")):
        if cand and Path(str(cand)).is_dir() and _has_tokenizer(Path(str(cand))):
            for f in TOKENIZER_FILES:
                if (Path(str(cand)) / f).is_file():
                    shutil.copy2(Path(str(cand)) / f, dest / f)
            return
    from omegaconf import OmegaConf

    from hpcft.train.modeling import load_tokenizer

    load_tokenizer(OmegaConf.create(model)).save_pretrained(str(dest))


def stage_checkpoint(job, src: Source, dest: Path, say: Say) -> None:
    """A checkpoint as a Hugging Face model: the model files transformers' Trainer wrote (trl methods), or hpcft's
    `trainable.safetensors` converted (a peft adapter for LoRA, full weights + the base's config otherwise)."""
    d = src.path
    names = {p.name for p in d.iterdir()}
    if (d / "deepspeed").is_dir():
        raise ConfigError(f"checkpoint {src.label} of job {job.id} holds DeepSpeed ZeRO partitions, not a model; "
                          "publish the job's final model (no --checkpoint)")
    if "adapter_config.json" in names or "config.json" in names:
        for p in sorted(d.iterdir()):
            if p.is_file() and not NOT_MODEL.match(p.name):
                if SAFE.match(p.name):
                    shutil.copyfile(p, dest / p.name)
                else:
                    say(f"leaving out {p.name}: assets hold safetensors, JSON and text only (no pickles)")
        if not any(dest.glob("*.safetensors")):
            raise ConfigError(f"checkpoint {src.label} of job {job.id} holds its weights only as pickles; an asset "
                              "holds safetensors (save with safe_serialization=True)")
    elif "trainable.safetensors" in names:
        _convert_trainable(job, d / "trainable.safetensors", dest, say)
    else:
        raise ConfigError(f"checkpoint {src.label} of job {job.id} holds no weights hpcft can publish "
                          f"({', '.join(sorted(names)[:6])}); publish the job's final model (no --checkpoint)")
    if not _has_tokenizer(dest):
        _copy_tokenizer(job, dest)


def _convert_trainable(job, path: Path, dest: Path, say: Say) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    say(f"converting {path.parent.name}/{path.name} to Hugging Face format")
    with safe_open(str(path), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    base = job_base(job)
    if any(".lora_A." in k or ".lora_B." in k for k in state):
        # peft's own save: the adapter name (".default") is not part of the stored keys
        save_file({k.replace(".default", ""): v for k, v in state.items()}, str(dest / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        final_cfg = Path(job.output_dir) / "final" / "adapter_config.json"
        if final_cfg.is_file():
            acfg = json.loads(final_cfg.read_text())
        else:
            from omegaconf import OmegaConf

            from hpcft.train.lora import lora_config

            lc = lora_config(OmegaConf.create(job_cfg(job).get("method") or {}), "CAUSAL_LM")
            if lc is None:
                raise ConfigError(f"job {job.id}: its checkpoint holds LoRA weights but its config has no method.lora")
            lc.save_pretrained(str(dest))
            acfg = json.loads((dest / "adapter_config.json").read_text())
        acfg.update(base_model_name_or_path=base, inference_mode=True)
        (dest / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
        return
    save_file(state, str(dest / "model.safetensors"), metadata={"format": "pt"})
    if base and Path(base).is_dir():
        for f in ("config.json", "generation_config.json"):
            if (Path(base) / f).is_file():
                shutil.copyfile(Path(base) / f, dest / f)
    else:
        from transformers import AutoConfig

        AutoConfig.from_pretrained(base).save_pretrained(str(dest))


def describe(d: Path) -> Dict[str, Any]:
    """What a model directory holds: kind (lora | model | diffusers_lora), task, library, the base it needs."""
    if (d / "adapter_config.json").is_file():
        acfg = json.loads((d / "adapter_config.json").read_text())
        return {"kind": "lora", "task": acfg.get("task_type") or "CAUSAL_LM", "library": "peft",
                "base_src": acfg.get("base_model_name_or_path")}
    if (d / "hpcft_base.json").is_file():
        return {"kind": "diffusers_lora", "task": "TEXT_TO_IMAGE", "library": "diffusers",
                "base_src": json.loads((d / "hpcft_base.json").read_text()).get("base")}
    if (d / "config.json").is_file():
        arch = " ".join(json.loads((d / "config.json").read_text()).get("architectures") or [])
        task = "SEQ_CLS" if "SequenceClassification" in arch else "CAUSAL_LM"
        return {"kind": "model", "task": task, "library": "transformers", "base_src": None}
    raise HpcftError(f"{d}: no model files (adapter_config.json, config.json or hpcft_base.json)")


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def stage_base(ledger, info: Dict[str, Any], job, dest: Path, final: Path, say: Say) -> Optional[Dict[str, Any]]:
    """Where the adapter's base is, recorded: copied in as base/ when it lived only in the job's run directory (a
    model built from a config, or a merged parent), else another asset or an outside path / hub id. The adapter's
    own reference is rewritten to it."""
    src = info.get("base_src")
    if info["kind"] == "model" or not src:
        return None
    bp = Path(str(src))
    if bp.is_absolute() and bp.is_dir() and job.output_dir and _inside(bp, Path(job.output_dir)):
        say(f"including the base model from {bp}")
        copy_tree(bp, dest / "base", say, only_safe=True)
        rec: Dict[str, Any] = {"included": "base", "from": str(src)}
        new = str(final / "base")
    else:
        owner = asset_at(ledger, bp) if bp.is_absolute() else None
        rec = {"asset": owner.ref, "path": str(src)} if owner else {"path": str(src)}
        new = str(src)
    if info["kind"] == "lora":
        acfg = json.loads((dest / "adapter_config.json").read_text())
        acfg["base_model_name_or_path"] = new
        (dest / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")
    else:  # a diffusers LoRA names its included base relative to itself: the version (and an export) relocatable
        b = json.loads((dest / "hpcft_base.json").read_text())
        b["base"] = rec["included"] if rec.get("included") else new
        (dest / "hpcft_base.json").write_text(json.dumps(b) + "\n")
    return rec
