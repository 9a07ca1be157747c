"""Using a published version: a job starts from it (`model.path=asset:NAME[@V]`, resolved at submit and recorded
as lineage), a LoRA asset's base is found, and `hpcft models export` copies it out of the registry (with --merge,
the adapter merged into its base: a plain Hugging Face model).
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

from hpcft.errors import ConfigError, HpcftError
from hpcft.ledger import assets as db
from hpcft.registry.card import model_card
from hpcft.registry.files import CARD, MANIFEST, Say, copy_tree, quiet
from hpcft.registry.names import find, split_ref


def resolve_model_path(cfg) -> None:
    """`model.path=asset:NAME[@V|@ALIAS]` -> that version's directory (a full model, a LoRA adapter merged into its
    recorded base when the job starts, or for method=t2i_lora a diffusers LoRA merged into its pipeline), verified
    (hpcft.registry.verify: a damaged version is refused and marked corrupt) and recorded as `model.asset` (an
    alias as `model.asset_alias`: the version it named at submit is the lineage)."""
    from omegaconf import open_dict

    from hpcft.ledger.store import Ledger
    from hpcft.registry.verify import require_intact

    ref = str(cfg.model.path)[len("asset:"):]
    key = f"model.path=asset:{ref}"
    ledger = Ledger()
    try:
        row = find(ledger, ref)
        alias = split_ref(ref)[2]
    except HpcftError as e:
        raise ConfigError(f"{key}: {e}") from None
    t2i = str((cfg.get("method") or {}).get("name")) == "t2i_lora"
    if row.kind == "diffusers_lora" and not t2i:
        raise ConfigError(f"{key}: {row.ref} holds LoRA weights for a diffusion pipeline; start a method=t2i_lora "
                          "job from it, or a language-model job from a language model asset")
    if t2i and row.kind != "diffusers_lora":
        raise ConfigError(f"{key}: {row.ref} is a language model ({row.kind}); method=t2i_lora starts from a "
                          "text-to-image asset")
    if not Path(row.path).is_dir():
        raise ConfigError(f"{key}: its directory {row.path} is not reachable from here")
    require_intact(ledger, row, key)
    with open_dict(cfg):
        cfg.model.path = row.path
        cfg.model.source = "pretrained"
        cfg.model.tokenizer = row.path
        cfg.model.asset = row.ref
        cfg.model.asset_alias = alias
        cfg.model.parent_job = None


def base_of(row: db.ModelAsset, ledger=None) -> Optional[str]:
    """The base a LoRA asset applies to: its included base/, another asset's directory, or a path / hub id."""
    base = (row.meta or {}).get("base") or {}
    if base.get("included"):
        return str(Path(row.path) / base["included"])
    if base.get("asset") and ledger is not None:
        try:
            return find(ledger, base["asset"]).path
        except HpcftError:
            pass
    return base.get("path")


def export(ledger, ref: str, out: Path, merge: bool = False, say: Say = quiet) -> Path:
    """A plain copy of a version outside the registry; with merge, a LoRA adapter merged into its base (a Hugging
    Face model that transformers and serving stacks load as is). Written to `out.tmp-*` and renamed."""
    row = find(ledger, ref)
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"-o {out}: exists and is not empty; choose a new directory")
    src = Path(row.path)
    if not src.is_dir():
        raise HpcftError(f"model asset {row.ref}: its directory {src} is not reachable from here")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if merge and row.kind == "lora":
            _export_merged(ledger, row, src, tmp, say)
        elif merge and row.kind == "diffusers_lora":
            _export_merged_pipeline(row, src, tmp, say)
        else:
            say(f"copying {row.ref} to {out}")
            copy_tree(src, tmp, say, skip=(MANIFEST,))
        for p in [tmp, *tmp.rglob("*")]:  # the export is the user's own, ordinary files
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _export_merged(ledger, row: db.ModelAsset, src: Path, tmp: Path, say: Say) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    base = base_of(row, ledger)
    if not base:
        raise HpcftError(f"model asset {row.ref}: no recorded base model to merge into")
    task = (row.meta or {}).get("task") or "CAUSAL_LM"
    auto = {"CAUSAL_LM": AutoModelForCausalLM, "SEQ_CLS": AutoModelForSequenceClassification}.get(task)
    if auto is None:
        raise ConfigError(f"model asset {row.ref}: cannot merge an adapter of task {task}; export without --merge")
    say(f"merging {row.ref} into its base {base}")
    kwargs: Dict[str, Any] = {}
    if task == "SEQ_CLS":  # a reward model: as many labels as its trained score head has rows
        from safetensors import safe_open

        with safe_open(str(src / "adapter_model.safetensors"), framework="pt") as f:
            heads = [k for k in f.keys() if ".score." in k and k.endswith("weight")]
            if heads:
                kwargs["num_labels"] = int(f.get_slice(heads[0]).get_shape()[0])
    model = auto.from_pretrained(base, dtype="auto", **kwargs)
    merged = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
    merged.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(tmp))
    meta = dict(row.meta or {})
    meta.update(kind="model", library="transformers", base=None)
    meta["lineage"] = [f"merged export of model asset {row.ref} (adapter merged into {base})"] + list(
        meta.get("lineage") or [])
    (tmp / CARD).write_text(model_card(row, meta), encoding="utf-8")


def _export_merged_pipeline(row: db.ModelAsset, src: Path, tmp: Path, say: Say) -> None:
    """A diffusers LoRA fused into its base: a plain pipeline directory (StableDiffusionPipeline.from_pretrained),
    with the model card; no reference back into the registry."""
    from trainers.text_to_image import merge_lora_pipeline

    say(f"merging {row.ref} into its base pipeline")
    merge_lora_pipeline(str(src), tmp)
    meta = dict(row.meta or {})
    meta.update(kind="model", library="diffusers", base=None)
    meta["lineage"] = [f"merged export of model asset {row.ref} (LoRA fused into its base pipeline)"] + list(
        meta.get("lineage") or [])
    (tmp / CARD).write_text(model_card(row, meta), encoding="utf-8")
