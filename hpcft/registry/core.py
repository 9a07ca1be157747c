"""The model registry: published models (assets) that later jobs start from, and that export as plain Hugging Face
models.

`hpcft publish JOB [--checkpoint step-N|latest] --name NAME` copies a job's final model (or one of its checkpoints,
converted to Hugging Face format) into `$HPCFT_REGISTRY` (default `$HPCFT_HOME/registry`; a shared path on a
cluster) as version N of NAME:

    <registry>/<NAME>/v<N>/   the model files (peft adapter, or full weights), its tokenizer,
                              base/ (a LoRA's base when it lived only in the job's run directory),
                              README.md (model card, Hugging Face front matter), SHA256SUMS (every file)

Everything is written into a hidden staging directory next to it, checksummed, fsynced and renamed into place: a
version directory is complete or absent, never half there. Each version is a ledger row (hpcft.ledger.assets:
publishing -> published | publish_failed, with the reason); `republish` retries a failed one.

A job starts from an asset with `model.path=asset:NAME[@VERSION]` (the newest published version by default),
resolved at submit into the version's directory and recorded as lineage (`model.asset`, an `asset` event); a LoRA
asset is merged into its recorded base when the job starts, as with `model.path=job:ID`. `hpcft models export
NAME[@V] --merge -o DIR` writes a plain Hugging Face model (adapters merged). `publish.auto=true` publishes the final
model when the job succeeds; a failed publish is an event and a `publish_failed` row, never a change of the job's
state. Torch-free at import (conversions and merges import it inside).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from hpcft import paths
from hpcft.ledger import assets as db
from hpcft.errors import ConfigError, HpcftError, NotFound, StateError

Say = Callable[[str], None]
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MANIFEST = "SHA256SUMS"
CARD = "README.md"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt",
                   "added_tokens.json", "spiece.model")
# what a transformers Trainer checkpoint holds besides the model (trl methods), and hpcft's own checkpoint files
NOT_MODEL = re.compile(r"^(optimizer\.pt|scheduler\.pt|scaler\.pt|state\.json|trainer_state\.json|training_args\.bin"
                       r"|trainable\.safetensors|rng.*\.pth?|README\.md)$")
BIG = 256 * 2**20  # files above this size get progress lines while they are checksummed


def _quiet(_msg: str) -> None:
    pass


def registry_root() -> Path:
    return Path(os.environ.get("HPCFT_REGISTRY") or paths.home() / "registry").expanduser().resolve()


# ------------------------------------------------------------------------------------------------------ values

def check_name(name: Optional[str], key: str = "--name") -> str:
    n = str(name or "")
    if not NAME_RE.fullmatch(n):
        shown = ascii(n[:40]) + ("..." if len(n) > 40 else "")
        raise ConfigError(f"{key}={shown}: a model asset name is 1-100 letters, digits, '.', '_' or '-', starting "
                          f"with a letter or digit; e.g. {key}=tiny-sft")
    return n


def check_visibility(value: Optional[str], key: str = "--visibility") -> str:
    v = str(value or "project")
    if v not in db.VISIBILITIES:
        raise ConfigError(f"{key}={v}: unknown visibility; use {key}=project (the members of the job's project) or "
                          f"{key}=all (everyone)")
    return v


def default_name(job_name: str) -> str:
    """A job's name as an asset name (publish.auto without publish.name)."""
    n = re.sub(r"[^A-Za-z0-9._-]+", "-", str(job_name)).strip("-._")[:100]
    return n or "model"


def parse_ref(ref: str, key: str = "NAME[@VERSION]") -> Tuple[str, Optional[int]]:
    """`NAME`, `NAME@3` or `NAME@v3` -> (name, version or None for the newest published)."""
    name, sep, ver = str(ref).partition("@")
    check_name(name, key)
    if not sep:
        return name, None
    v = ver[1:] if ver[:1] in ("v", "V") else ver
    if not v.isdigit() or int(v) < 1:
        raise ConfigError(f"{ref}: the version after @ is a number (NAME@3); see `hpcft models list {name}`")
    return name, int(v)


def check_publish(cfg) -> None:
    """The `publish` section of a job config, checked at submit (hpcft.jobs.preflight.validate)."""
    pub = cfg.get("publish")
    if pub is None:
        return
    if pub.get("name") is not None:
        check_name(pub.name, "publish.name")
    check_visibility(pub.get("visibility"), "publish.visibility")
    if pub.get("auto") and pub.get("name") is None:
        check_name(default_name(str(cfg.name)), "publish.name")
    if pub.get("description") is not None:
        from hpcft.config.checks import DESCRIPTION_MAX, text

        text("publish.description", pub.description, DESCRIPTION_MAX)


# ------------------------------------------------------------------------------------------------------ lookups

def find(ledger, ref: str, published_only: bool = True) -> db.ModelAsset:
    """The version `ref` names (NAME: the newest published) among those the caller may see; NotFound otherwise.
    With published_only, a version in another state is refused with its state and reason."""
    name, version = parse_ref(ref)
    caller, sharing = ledger.caller(), ledger.sharing()
    rows = [r for r in db.search(ledger, name=name, version=version) if db.readable(r, caller, sharing)]
    if version is None:
        rows = [r for r in rows if r.state == db.PUBLISHED]
    if not rows:
        what = f"{name}@{version}" if version else f"{name} (no published version)"
        raise NotFound(f"model asset {what}: not in the registry, or you ({caller.name}) may not see it; see "
                       "`hpcft models list`")
    row = rows[0]
    if published_only and row.state != db.PUBLISHED:
        why = f" ({row.state_reason})" if row.state_reason else ""
        hint = f"; `hpcft models republish {row.ref}` retries it" if row.state == db.PUBLISH_FAILED else ""
        raise StateError(f"model asset {row.ref} is {row.state}{why}{hint}")
    return row


def visible(ledger, name: Optional[str] = None, include_deleted: bool = False) -> List[db.ModelAsset]:
    caller, sharing = ledger.caller(), ledger.sharing()
    return [r for r in db.search(ledger, name=name) if db.readable(r, caller, sharing)
            and (include_deleted or r.state != db.DELETED)]


def asset_at(ledger, path: Path) -> Optional[db.ModelAsset]:
    """The asset whose version directory holds `path` (a path inside the registry), if the caller may see it."""
    try:
        rel = Path(path).resolve().relative_to(registry_root())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 2 or not re.fullmatch(r"v\d+", parts[1]):
        return None
    rows = [r for r in db.search(ledger, name=parts[0], version=int(parts[1][1:]))
            if db.readable(r, ledger.caller(), ledger.sharing())]
    return rows[0] if rows else None


# ------------------------------------------------------------------------------------------------------ sources

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


def _job_cfg(job) -> Dict[str, Any]:
    return dict(job.config or {})


def _job_base(job) -> Optional[str]:
    """The base weights a job trained on: its run's base/ (a model built from a config, or a merged parent) or
    model.path."""
    base = Path(job.output_dir or "") / "base"
    if (base / "config.json").is_file():
        return str(base)
    return (_job_cfg(job).get("model") or {}).get("path")


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _copy_tokenizer(job, dest: Path) -> None:
    """Tokenizer files for a checkpoint: from the run's final/ or base/, else the model's own."""
    out = Path(job.output_dir or "")
    model = _job_cfg(job).get("model") or {}
    for cand in (out / "final", out / "base", model.get("tokenizer"), model.get("path")):
        if cand and Path(str(cand)).is_dir() and _has_tokenizer(Path(str(cand))):
            for f in TOKENIZER_FILES:
                if (Path(str(cand)) / f).is_file():
                    shutil.copy2(Path(str(cand)) / f, dest / f)
            return
    from omegaconf import OmegaConf

    from hpcft.train.modeling import load_tokenizer

    load_tokenizer(OmegaConf.create(model)).save_pretrained(str(dest))


def _copy_tree(src: Path, dest: Path, say: Say, skip: Tuple[str, ...] = (CARD,)) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.is_symlink():
            continue
        if p.is_dir():
            (dest / rel).mkdir(parents=True, exist_ok=True)
        elif not (len(rel.parts) == 1 and rel.name in skip):
            if p.stat().st_size >= BIG:
                say(f"copying {rel} ({_size(p.stat().st_size)})")
            shutil.copyfile(p, dest / rel)


def _stage_checkpoint(job, src: Source, dest: Path, say: Say) -> None:
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
                shutil.copyfile(p, dest / p.name)
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
    base = _job_base(job)
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

            lc = lora_config(OmegaConf.create(_job_cfg(job).get("method") or {}), "CAUSAL_LM")
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


def _stage_base(ledger, info: Dict[str, Any], job, dest: Path, final: Path, say: Say) -> Optional[Dict[str, Any]]:
    """Where the adapter's base is, recorded: copied in as base/ when it lived only in the job's run directory (a
    model built from a config, or a merged parent), else another asset or an outside path / hub id. The adapter's
    own reference is rewritten to it."""
    src = info.get("base_src")
    if info["kind"] == "model" or not src:
        return None
    bp = Path(str(src))
    if bp.is_absolute() and bp.is_dir() and job.output_dir and _inside(bp, Path(job.output_dir)):
        say(f"including the base model from {bp}")
        _copy_tree(bp, dest / "base", say)
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
    else:
        b = json.loads((dest / "hpcft_base.json").read_text())
        b["base"] = new
        (dest / "hpcft_base.json").write_text(json.dumps(b) + "\n")
    return rec


# ------------------------------------------------------------------------------------------------------ card

def _evals(job, src: Source) -> Tuple[Dict[str, Dict[str, float]], Optional[float]]:
    """({split: {metric: value}}, train loss) as of the published step: the last evaluation at or before it."""
    evals: Dict[str, Dict[str, float]] = {}
    loss = None
    path = Path(job.output_dir or "") / "metrics.jsonl"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return evals, loss
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step = rec.get("step")
        if src.step is not None and isinstance(step, int) and step > src.step:
            continue
        if rec.get("type") == "eval" and rec.get("split"):
            evals[rec["split"]] = {k: v for k, v in rec.items() if k not in ("type", "split", "epoch", "step", "time")
                                   and isinstance(v, (int, float))}
        elif rec.get("type") == "train" and isinstance(rec.get("loss"), (int, float)):
            loss = float(rec["loss"])
    return evals, loss


def _lineage(ledger, job, depth: int = 0) -> List[str]:
    """Where a job's model came from, one line per hop, newest first."""
    model = _job_cfg(job).get("model") or {}
    if depth > 8:
        return ["..."]
    if model.get("asset"):
        lines = [f"job {job.id} started from model asset {model['asset']}"]
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


def _meta(ledger, job, src: Source, row, info: Dict[str, Any], base: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    cfg = _job_cfg(job)
    evals, loss = _evals(job, src)
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
        "model": {k: (cfg.get("model") or {}).get(k) for k in ("name", "source", "path", "asset", "parent_job")},
        "data": {k: data.get(k) for k in ("name", "train", "validation", "test", "format")},
        "training": {k: t.get(k) for k in ("epochs", "max_steps", "learning_rate", "batch_size",
                                           "gradient_accumulation", "sequence_length", "precision", "seed")},
        "eval": evals, "train_loss": loss, "lineage": lineage,
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


def model_card(row, meta: Dict[str, Any]) -> str:
    """README.md: Hugging Face front matter (library, base model, tags, evaluation as model-index) and the story."""
    import yaml

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
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {row.name} (version {row.version})", ""]
    if row.description:
        lines += [row.description, ""]
    how = "a LoRA adapter (peft) with its base" if meta["kind"] == "lora" else (
        "LoRA weights for a diffusers pipeline" if meta["kind"] == "diffusers_lora" else "a Hugging Face model")
    lines += [f"Published with hpcft from the {meta['source']} of job {meta['job']['id']} ({meta['job']['name']}): "
              f"{how}.", "", "## Use it", "", "```bash",
              f"hpcft submit model.path=asset:{row.ref} method=lora ...   # train on top of it (recorded as lineage)",
              f"hpcft models export {row.ref} --merge -o ./{row.name}-v{row.version}   # a plain Hugging Face model",
              "```", "", "## Training", "", "| | |", "|---|---|", f"| method | {meta['method']['name']} |"]
    if meta["method"].get("lora"):
        lo = meta["method"]["lora"]
        lines.append(f"| LoRA | rank {lo.get('rank')}, alpha {lo.get('alpha')}, dropout {lo.get('dropout')}, "
                     f"targets {', '.join(lo.get('target_modules') or [])} |")
    lines.append(f"| base model | {_base_label(meta) or (meta['model'].get('name') or '') + ' (built from a config)'} |")
    if (meta.get("base") or {}).get("included"):
        lines.append("| base weights | included in `base/` |")
    d = meta["data"]
    lines.append(f"| data | {d.get('name')} (format {d.get('format')}): train {d.get('train')}"
                 + (f", validation {d.get('validation')}" if d.get("validation") else "")
                 + (f", test {d.get('test')}" if d.get("test") else "") + " |")
    for k, v in meta["training"].items():
        if v is not None:
            lines.append(f"| {k.replace('_', ' ')} | {v} |")
    lines.append(f"| published step | {meta['step']} |")
    if meta.get("train_loss") is not None:
        lines.append(f"| train loss (last logged) | {meta['train_loss']:.4f} |")
    lines += ["", "## Evaluation", ""]
    if meta["eval"]:
        lines += ["| split | metric | value |", "|---|---|---|"]
        for split, vals in sorted(meta["eval"].items()):
            lines += [f"| {split} | {k} | {v:.4f} |" for k, v in sorted(vals.items())]
    else:
        lines.append("No evaluation up to this step (jobs evaluate `data.validation` and `data.test` after each "
                     "epoch).")
    lines += ["", "## Lineage", ""] + [f"- {x}" for x in meta["lineage"]]
    lines += ["", "## Files", "", f"`{MANIFEST}` holds the sha256 of every file here (`sha256sum -c {MANIFEST}`; "
              f"`hpcft models show {row.ref} --verify`).", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ files

def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def sha256_file(p: Path, say: Say = _quiet) -> str:
    h = hashlib.sha256()
    size, done, shown = p.stat().st_size, 0, 0
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(8 * 2**20), b""):
            h.update(chunk)
            done += len(chunk)
            if size >= BIG and done - shown >= BIG:
                shown = done
                say(f"checksum {p.name}: {100 * done // size}%")
    return h.hexdigest()


def write_manifest(d: Path, say: Say = _quiet) -> Tuple[int, int]:
    """SHA256SUMS (sha256sum's format, sorted) of every file under d; returns (files, bytes)."""
    lines, total = [], 0
    files = [p for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()
             and p.relative_to(d).as_posix() != MANIFEST]
    for p in files:
        lines.append(f"{sha256_file(p, say)}  {p.relative_to(d).as_posix()}")
        total += p.stat().st_size
    with open(d / MANIFEST, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return len(files), total


def verify(d: Path) -> List[str]:
    """Problems found by checking `d` against its SHA256SUMS (empty: every file is there and intact, none extra)."""
    listed: Dict[str, str] = {}
    try:
        for line in (d / MANIFEST).read_text().splitlines():
            digest, _, rel = line.partition("  ")
            listed[rel] = digest
    except OSError as e:
        return [f"{MANIFEST}: {e.strerror}"]
    problems = []
    for rel, digest in sorted(listed.items()):
        p = d / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif sha256_file(p) != digest:
            problems.append(f"{rel}: checksum differs")
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not in {MANIFEST}")
    return problems


def _protect(d: Path, visibility: str, readers: List[str]) -> None:
    """Published files are read-only; directories and files readable by everyone (visibility all), else by their
    owner and, through POSIX ACLs, the project's members (hpcft.rundir.files)."""
    dmode, fmode = (0o755, 0o444) if visibility == "all" else (0o700, 0o400)
    for p in [d, *d.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, dmode if p.is_dir() else fmode)
    if visibility == "project" and readers:
        from hpcft.rundir import files

        files.share_run_dir(d, readers=readers, writers=[])


def _members(ledger, project: str, owner: str) -> List[str]:
    import pwd

    out = []
    for u in ledger.projects().get(project, []):
        try:
            pwd.getpwnam(u)
        except KeyError:
            continue
        if u != owner:
            out.append(u)
    return out


def _link_duplicates(ledger, row, staging: Path) -> int:
    """Files equal (sha256 and size) to a file of an earlier published version of the same name with the same
    visibility become hard links to it: a LoRA's included base, published again with every version, is stored
    once. Returns how many were linked."""
    known: Dict[str, Path] = {}
    for other in db.search(ledger, name=row.name, states=[db.PUBLISHED]):
        if other.id == row.id or other.visibility != row.visibility or not other.path:
            continue
        try:
            lines = (Path(other.path) / MANIFEST).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            digest, _, rel = line.partition("  ")
            known.setdefault(digest, Path(other.path) / rel)
    n = 0
    for line in (staging / MANIFEST).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        old, new = known.get(digest), staging / rel
        if old is None or rel == CARD:
            continue
        try:
            if old.stat().st_size != new.stat().st_size:
                continue
            tmp = new.with_name(new.name + ".link")
            os.link(old, tmp)
            os.replace(tmp, new)
            n += 1
        except OSError:  # another filesystem, no hard links there, no access: keep the copy
            continue
    return n


def _remove_tree(d: Path) -> None:
    """Remove a (read-only) version directory: its directories are made writable first."""
    if not d.exists():
        return
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            os.chmod(p, 0o700)
    shutil.rmtree(d)


def fsync_dir(path: Path) -> None:
    from hpcft.train.checkpoint import fsync_dir as fsync_dir

    fsync_dir(path)


def _failure(e: BaseException, root: Path) -> str:
    """One line for why a publish failed, with what to do."""
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or root
        return (f"cannot write {where}: {e.strerror} (the registry is {root}: fix its permissions or mount, or "
                f"set HPCFT_REGISTRY)")
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if not isinstance(e, HpcftError) else text


# ------------------------------------------------------------------------------------------------------ publish

def publish(ledger, job_id: int, *, name: str, checkpoint: Optional[str] = None, description: Optional[str] = None,
            visibility: str = "project", say: Say = _quiet, auto: bool = False) -> db.ModelAsset:
    """Publish a job's final model (or a checkpoint) as the next version of `name`. Refusals that need no row (bad
    name or visibility, no such job or checkpoint, no right to publish it, a name owned by someone else) raise
    before anything is recorded; once the row exists, the result is the row: published, or publish_failed with
    the reason (and an event on the job)."""
    from hpcft.ledger.access import authorize
    from hpcft.config.checks import DESCRIPTION_MAX, text

    name = check_name(name)
    visibility = check_visibility(visibility)
    if description is not None:
        description = text("--description", description, DESCRIPTION_MAX)
    job, _ = authorize(ledger, job_id, "share")  # publishing shares the model: the job's owner or an administrator
    src = resolve_source(job, checkpoint)
    caller = ledger.caller()
    owner = db.name_owner(ledger, name)
    if owner is not None and owner != caller.name and not caller.admin:
        raise ConfigError(f"--name {name}: this model asset name belongs to {owner}; choose another name")
    row = db.create_version(ledger, name=name, owner=caller.name, project=job.project, visibility=visibility,
                            job_id=job.id, source=src.label, method=job.method,
                            description=description if description is not None else (job.description or ""),
                            meta={"source": src.label, "auto": auto})
    ledger.add_event(job.id, "publish", f"publishing the {src.label} as model asset {row.ref}"
                     + (" (publish.auto)" if auto else ""), asset=row.ref, source=src.label, auto=auto)
    return _materialise(ledger, row, job, src, say, auto)


def _materialise(ledger, row: db.ModelAsset, job, src: Source, say: Say, auto: bool = False) -> db.ModelAsset:
    root = registry_root()
    final = root / row.name / f"v{row.version}"
    db.update_fields(ledger, row.id, path=str(final))
    say(f"publishing the {src.label} of job {job.id} as {row.ref} -> {final}")
    try:
        meta = _build(ledger, row, job, src, final, say)
    except BaseException as e:
        reason = _failure(e, root)
        db.set_state(ledger, row.id, db.PUBLISHING, db.PUBLISH_FAILED, reason)
        _job_event(ledger, job.id, "publish_failed", f"model asset {row.ref}: {reason}", asset=row.ref, reason=reason,
                   auto=auto)
        if not isinstance(e, Exception):
            raise
        return db.get(ledger, row.id)
    db.set_state(ledger, row.id, db.PUBLISHING, db.PUBLISHED, None, meta=meta, kind=meta["kind"],
                 published_at=db.utcnow())
    _job_event(ledger, job.id, "published", f"model asset {row.ref} published ({meta['files']} files, "
               f"{_size(meta['size_bytes'])}) at {final}", asset=row.ref, path=str(final), auto=auto)
    return db.get(ledger, row.id)


def _job_event(ledger, job_id: int, kind: str, message: str, **data: Any) -> None:
    try:
        ledger.add_event(job_id, kind, message, **data)
    except Exception as e:  # the asset row holds the outcome; a job event that cannot be written must not undo it
        print(f"[hpcft] note: could not record the {kind} event on job {job_id}: {e}", flush=True)


def _build(ledger, row, job, src: Source, final: Path, say: Say) -> Dict[str, Any]:
    """Stage, describe, card, checksum, protect, rename: the version directory appears complete or not at all."""
    name_dir = final.parent
    if not name_dir.is_dir():
        name_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(name_dir, 0o755)
    staging = name_dir / f".v{row.version}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir(mode=0o700)
    try:
        if src.label == "final":
            _copy_tree(src.path, staging, say)
        else:
            _stage_checkpoint(job, src, staging, say)
        info = describe(staging)
        base = _stage_base(ledger, info, job, staging, final, say)
        meta = _meta(ledger, job, src, row, info, base)
        (staging / CARD).write_text(model_card(row, meta), encoding="utf-8")
        files, size = write_manifest(staging, say)
        meta.update(files=files, size_bytes=size, manifest_sha256=sha256_file(staging / MANIFEST),
                    linked=_link_duplicates(ledger, row, staging))
        _protect(staging, row.visibility, _members(ledger, row.project, row.owner))
        from hpcft.train.checkpoint import fsync_tree

        fsync_tree(staging)
        if final.exists():  # what an earlier, failed attempt at this version left
            _remove_tree(final)
        os.rename(staging, final)
        fsync_dir(name_dir)
    except BaseException:
        try:
            _remove_tree(staging)
        except OSError:
            pass
        raise
    return meta


def republish(ledger, ref: str, say: Say = _quiet) -> db.ModelAsset:
    """Retry a failed version (same number) from its recorded source job and checkpoint."""
    row = find(ledger, ref, published_only=False)
    db.require_owner(row, ledger.caller(), "republish")
    if row.state != db.PUBLISH_FAILED:
        raise StateError(f"model asset {row.ref} is {row.state}: only a publish_failed version can be republished")
    try:
        job = ledger.get(int(row.job_id))
    except (HpcftError, TypeError):
        raise NotFound(f"model asset {row.ref}: its source job {row.job_id} is no longer in the ledger; publish "
                       "another job") from None
    src = resolve_source(job, row.source)
    if not db.set_state(ledger, row.id, db.PUBLISH_FAILED, db.PUBLISHING, None):
        raise StateError(f"model asset {row.ref} changed meanwhile (now {db.get(ledger, row.id).state})")
    _job_event(ledger, job.id, "publish", f"republishing the {src.label} as model asset {row.ref}", asset=row.ref,
               source=src.label)
    return _materialise(ledger, db.get(ledger, row.id), job, src, say)


def delete(ledger, ref: str) -> db.ModelAsset:
    """Delete a version: refused while a queued or running job starts from it, or another asset's LoRA needs it as
    its base. Its directory goes first (renamed away in one step, then removed); the row stays, marked deleted, so
    the version number is never reused."""
    name, version = parse_ref(ref)
    if version is None:
        raise ConfigError(f"{ref}: name the version to delete (NAME@VERSION; see `hpcft models list {name}`)")
    row = find(ledger, ref, published_only=False)
    db.require_owner(row, ledger.caller(), "delete")
    if row.state in (db.PUBLISHING, db.DELETED):
        raise StateError(f"model asset {row.ref} is {row.state}: cannot delete it")
    users = db.live_users(ledger, row.name, row.version)
    if users:
        names = ", ".join(f"job {u['id']} ({u['owner']}, {u['state']})" for u in users)
        raise StateError(f"model asset {row.ref} is in use by {names}; delete it after they end (or stop them)")
    needs = [r.ref for r in db.search(ledger, states=[db.PUBLISHED, db.PUBLISH_FAILED])
             if ((r.meta or {}).get("base") or {}).get("asset") == row.ref]
    if needs:
        raise StateError(f"model asset {row.ref} is the base of {', '.join(needs)}; delete those first")
    d = Path(row.path) if row.path else None
    gone = None
    if d is not None and d.exists():
        gone = d.with_name(f".{d.name}.deleted-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(d, gone)
        except OSError as e:
            raise HpcftError(f"model asset {row.ref}: cannot remove {d}: {e.strerror}; delete it as its owner "
                             f"({row.owner}) or a user who may write {d.parent}") from None
    try:
        if not db.set_state(ledger, row.id, row.state, db.DELETED, f"deleted by {ledger.user}"):
            raise StateError(f"model asset {row.ref} changed meanwhile (now {db.get(ledger, row.id).state})")
    except BaseException:
        if gone is not None:
            os.rename(gone, d)  # the ledger refused: the files come back as they were
        raise
    if gone is not None:
        _remove_tree(gone)
    return db.get(ledger, row.id)


def auto_publish(ledger, job_id: int, say: Optional[Say] = None) -> Optional[db.ModelAsset]:
    """`publish.auto=true`: publish a job's final model right after its success is recorded. Never raises and never
    touches the job's state: a failure is an event on the job (and, once a version was taken, a publish_failed
    row)."""
    say = say or (lambda m: print(f"[hpcft] {m}", flush=True))
    try:
        job = ledger.get(job_id)
        pub = (job.config or {}).get("publish") or {}
        if not pub.get("auto"):
            return None
        row = publish(ledger, job_id, name=pub.get("name") or default_name(job.name),
                      description=pub.get("description"), visibility=pub.get("visibility") or "project", say=say,
                      auto=True)
        if row.state == db.PUBLISHED:
            say(f"job {job_id}: published as model asset {row.ref} ({row.path})")
        else:
            say(f"job {job_id}: automatic publish of {row.ref} failed: {row.state_reason}")
        return row
    except Exception as e:
        msg = _failure(e, registry_root())
        _job_event(ledger, job_id, "publish_failed", f"automatic publish failed: {msg}", reason=msg, auto=True)
        say(f"job {job_id}: automatic publish failed: {msg}")
        return None


def auto_publish_pending(ledger, job, start_grace_s: float = 30.0, limit_s: float = 3600.0) -> bool:
    """True while a succeeded job with publish.auto has not yet recorded how its automatic publish ended (`hpcft
    submit --wait` waits for it): up to `start_grace_s` after the success for it to start, up to `limit_s` for it
    to end (a publisher that died leaves its row `publishing`)."""
    if job.state != "success" or not ((job.config or {}).get("publish") or {}).get("auto"):
        return False
    evs = [e for e in ledger.events(job.id) if (e.data or {}).get("auto") and e.attempt == job.attempt]
    if any(e.kind in ("published", "publish_failed") for e in evs):
        return False
    if job.finished_at is None:
        return False
    ended = job.finished_at if job.finished_at.tzinfo else job.finished_at.replace(tzinfo=db.utcnow().tzinfo)
    age = (db.utcnow() - ended).total_seconds()
    return age < (limit_s if any(e.kind == "publish" for e in evs) else start_grace_s)


# ------------------------------------------------------------------------------------------------------ use

def resolve_model_path(cfg) -> None:
    """`model.path=asset:NAME[@V]` -> that version's directory (a full model, or a LoRA adapter that is merged into
    its recorded base when the job starts), recorded as `model.asset` (lineage)."""
    from omegaconf import open_dict

    from hpcft.ledger.store import Ledger

    ref = str(cfg.model.path)[len("asset:"):]
    try:
        row = find(Ledger(), ref)
    except HpcftError as e:
        raise ConfigError(f"model.path=asset:{ref}: {e}") from None
    if row.kind == "diffusers_lora":
        raise ConfigError(f"model.path=asset:{ref}: {row.ref} holds LoRA weights for a diffusion pipeline; a job "
                          "starts from a language model asset (full weights or a peft adapter)")
    if not Path(row.path).is_dir():
        raise ConfigError(f"model.path=asset:{ref}: its directory {row.path} is not reachable from here")
    with open_dict(cfg):
        cfg.model.path = row.path
        cfg.model.source = "pretrained"
        cfg.model.tokenizer = row.path
        cfg.model.asset = row.ref
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


def export(ledger, ref: str, out: Path, merge: bool = False, say: Say = _quiet) -> Path:
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
            raise ConfigError(f"model asset {row.ref} holds diffusers LoRA weights: --merge is for language-model "
                              "adapters; export without --merge and load them with pipeline.load_lora_weights")
        else:
            say(f"copying {row.ref} to {out}")
            _copy_tree(src, tmp, say, skip=(MANIFEST,))
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
