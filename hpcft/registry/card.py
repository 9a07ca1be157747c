"""The model card (README.md of a version): the metadata a publish records (the job, its method, data, training
settings, evaluation as of the published step, lineage) and the card rendered from it (model_card.md.j2: Hugging
Face front matter, then the story).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from hpcft.errors import HpcftError
from hpcft.registry.files import MANIFEST
from hpcft.registry.names import find
from hpcft.registry.stage import Source, job_cfg

CARD_TEMPLATE = "model_card.md.j2"


def _evals(job, src: Source) -> Tuple[Dict[str, Dict[str, float]], Optional[float], Optional[str]]:
    """({split: {metric: value}}, train loss, note) of the published step: only an evaluation made at that very step
    counts (an earlier one measured other weights); the note says when there was none, and where the nearest was."""
    evals: Dict[str, Dict[str, float]] = {}
    loss, before = None, None
    path = Path(job.output_dir or "") / "metrics.jsonl"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return evals, loss, "no metrics recorded"
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step = rec.get("step")
        if src.step is not None and isinstance(step, int) and step > src.step:
            continue
        if rec.get("type") == "eval" and rec.get("split"):
            if src.step is not None and step != src.step:
                before = step if isinstance(step, int) else before
                continue
            evals[rec["split"]] = {k: v for k, v in rec.items() if k not in ("type", "split", "epoch", "step", "time")
                                   and isinstance(v, (int, float))}
        elif rec.get("type") == "train" and isinstance(rec.get("loss"), (int, float)):
            loss = float(rec["loss"])
    note = None
    if not evals:
        note = (f"no evaluation at step {src.step}" if src.step is not None else "no evaluation recorded") + (
            f" (the last before it was at step {before}, of other weights)" if before is not None else "")
    return evals, loss, note


def _lineage(ledger, job, depth: int = 0) -> List[str]:
    """Where a job's model came from, one line per hop, newest first."""
    model = job_cfg(job).get("model") or {}
    if depth > 8:
        return ["..."]
    if model.get("asset"):
        via = f" (through alias {model['asset_alias']} at submit)" if model.get("asset_alias") else ""
        lines = [f"job {job.id} started from model asset {model['asset']}{via}"]
        try:
            a = find(ledger, str(model["asset"]), published_only=False)
            lines += [str(x) for x in (a.meta or {}).get("lineage", [])]
        except HpcftError:
            lines.append(f"(model asset {model['asset']}: not visible to you)")
        return lines
    if model.get("parent_job"):
        lines = [f"job {job.id} started from the final model of job {model['parent_job']}"]
        try:
            parent = ledger.get(int(model["parent_job"]))
            lines += _lineage(ledger, parent, depth + 1)
        except HpcftError:
            lines.append(f"(job {model['parent_job']}: not visible to you)")
        return lines
    if model.get("source") == "config":
        return [f"job {job.id} trained model {model.get('name')} built from a config (random init)"]
    return [f"job {job.id} trained on base model {model.get('path')}"]


def build_meta(ledger, job, src: Source, row, info: Dict[str, Any], base: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    from hpcft.config.secrets import masked

    cfg = masked(job_cfg(job))  # a card is read by others: never a secret (notify.urls, ...)
    evals, loss, eval_note = _evals(job, src)
    t = cfg.get("training") or {}
    m = cfg.get("method") or {}
    data = cfg.get("data") or {}
    lineage = [f"{row.ref}: {src.label} of job {job.id} ({job.name}, {job.method}, owner {job.owner})"]
    lineage += _lineage(ledger, job)
    return {
        "kind": info["kind"], "task": info["task"], "library": info["library"], "base": base,
        "job": {"id": job.id, "name": job.name, "owner": job.owner, "project": job.project, "state": job.state},
        "source": src.label, "step": src.step, "source_path": str(src.path),
        "method": {"name": m.get("name"), "lora": m.get("lora"), "quantization": m.get("quantization")},
        "model": {k: (cfg.get("model") or {}).get(k) for k in ("name", "source", "path", "asset", "asset_alias",
                                                                      "parent_job")},
        "data": {k: data.get(k) for k in ("name", "train", "validation", "test", "format")},
        "training": {k: t.get(k) for k in ("epochs", "max_steps", "learning_rate", "batch_size",
                                           "gradient_accumulation", "sequence_length", "precision", "seed")},
        "eval": evals, "eval_note": eval_note, "train_loss": loss, "lineage": lineage,
    }


PIPELINE = {"CAUSAL_LM": "text-generation", "SEQ_CLS": "text-classification", "TEXT_TO_IMAGE": "text-to-image"}


def _base_label(meta: Dict[str, Any]) -> Optional[str]:
    base = meta.get("base") or {}
    if base.get("asset"):
        return f"asset:{base['asset']}"
    if base.get("path"):
        return str(base["path"])
    model = meta.get("model") or {}
    if model.get("asset"):
        return f"asset:{model['asset']}"
    if model.get("source") == "pretrained" and model.get("path"):
        return str(model["path"])
    return None



def _front_matter(row, meta: Dict[str, Any]) -> Dict[str, Any]:
    """The card's Hugging Face front matter: library, base model, tags, evaluation as model-index, hpcft's own."""
    front: Dict[str, Any] = {"library_name": meta["library"]}
    if _base_label(meta):
        front["base_model"] = _base_label(meta)
    front["pipeline_tag"] = PIPELINE.get(meta["task"], "text-generation")
    front["tags"] = list(dict.fromkeys(["hpcft", str(meta["method"]["name"])]
                                       + (["lora"] if meta["kind"] != "model" else [])))
    if meta["data"].get("name"):
        front["datasets"] = [str(meta["data"]["name"])]
    results = [{"task": {"type": front["pipeline_tag"]}, "dataset": {"name": split, "type": str(meta["data"].get("name"))},
                "metrics": [{"type": k, "value": float(v), "name": f"{split} {k}"} for k, v in sorted(vals.items())]}
               for split, vals in sorted(meta["eval"].items()) if vals]
    if results:
        front["model-index"] = [{"name": row.name, "results": results}]
    front["hpcft"] = {"asset": row.name, "version": row.version, "job": meta["job"]["id"], "source": meta["source"],
                      "step": meta["step"], "kind": meta["kind"], "base": meta["base"], "method": meta["method"]["name"]}
    return front


def model_card(row, meta: Dict[str, Any]) -> str:
    """README.md: Hugging Face front matter (library, base model, tags, evaluation as model-index) and the story,
    rendered from model_card.md.j2 (shipped next to this module)."""
    import yaml
    from jinja2 import Environment, StrictUndefined

    env = Environment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["fmt"] = format  # {{ v | fmt('.4f') }}: Python's format(), as an f-string formats
    template = env.from_string((resources.files(__package__) / CARD_TEMPLATE).read_text(encoding="utf-8"))
    how = {"lora": "a LoRA adapter (peft) with its base", "diffusers_lora": "LoRA weights for a diffusers pipeline, "
           "with its base"}.get(meta["kind"], "a diffusers pipeline" if meta["library"] == "diffusers"
                                    else "a Hugging Face model")
    lora = meta["method"].get("lora")
    return template.render(
        row=row, meta=meta, data=meta["data"], how=how, lora=lora, manifest=MANIFEST,
        front=yaml.safe_dump(_front_matter(row, meta), sort_keys=False, allow_unicode=True).rstrip(),
        targets=", ".join(lora.get("target_modules") or []) if lora else None,
        base_model=_base_label(meta) or (meta["model"].get("name") or "") + " (built from a config)")
