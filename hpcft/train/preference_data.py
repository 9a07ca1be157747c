"""Datasets of the preference / RL / text-to-image methods, from any source (hpcft.train.sources), read with errors
naming file, record and field.

- preference  {"prompt", "chosen", "rejected"} as strings or messages, or ShareGPT {"conversations", "chosen",
              "rejected"} (format sharegpt_preference)                        (method=reward, method=dpo)
- prompt      {"prompt"} (other string fields are kept) (method=grpo; they reach the reward functions as kwargs)
- image_caption {"image": path relative to the data file, "caption"}  (method=t2i_lora)

`data_cfg` (the job's `data` section) brings data.format and data.columns; `role` (train / validation / test)
picks the split of a DatasetDict or hub dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from hpcft.train.formats import PREFERENCE_FORMATS
from hpcft.train.jsonl import DataError

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")
PROMPT_FORMATS = ("prompt", "prompt_response") + PREFERENCE_FORMATS


def _records(path: Any, data_cfg: Any, role: str, accepted):
    from hpcft.train.data import Records

    fmt = str(data_cfg.get("format") or "auto") if data_cfg is not None else "auto"
    if fmt not in ("auto",) + tuple(accepted):
        fmt = "auto"  # e.g. a prompt reader on preference data: detect
    columns = data_cfg.get("columns") if data_cfg is not None else None
    return Records(path, fmt, columns, role=role, accepted=accepted)


def load_preference(path: str | Path, data_cfg: Any = None, role: str = "train") -> List[Dict[str, Any]]:
    """[{"prompt", "chosen", "rejected"}]: all strings, or (when any record has messages) all message lists, the
    form trl renders with the chat template."""
    recs = _records(path, data_cfg, role, PREFERENCE_FORMATS)
    out = [r for _, r in recs]
    if not out:
        raise DataError(f"{recs.source.name}: no records; a preference file needs records like "
                        '{"prompt": ..., "chosen": ..., "rejected": ...}')
    if any(isinstance(r["chosen"], list) for r in out):  # one form for the whole split (one Arrow schema)
        for r in out:
            for k, role_ in (("prompt", "user"), ("chosen", "assistant"), ("rejected", "assistant")):
                if isinstance(r[k], str):
                    r[k] = [{"role": role_, "content": r[k]}]
    return out


def load_prompts(path: str | Path, data_cfg: Any = None, role: str = "train") -> List[Dict[str, Any]]:
    """[{"prompt", ...}]; every record needs a "prompt" (a string or messages). Extra string/number fields are kept
    when every record has them (so a dataset column can feed a reward function). Preference records give their
    prompts."""
    recs = _records(path, data_cfg, role, PROMPT_FORMATS)
    out = []
    for _, r in recs:
        out.append({"prompt": r["prompt"]} if recs.format in PREFERENCE_FORMATS else r)
    if not out:
        raise DataError(f'{recs.source.name}: no records; a prompt file needs records like {{"prompt": ...}}')
    if any(isinstance(r["prompt"], list) for r in out):
        for r in out:
            if isinstance(r["prompt"], str):
                r["prompt"] = [{"role": "user", "content": r["prompt"]}]
    common = set(out[0])
    for r in out[1:]:
        common &= set(r)
    keep = ["prompt"] + sorted(k for k in common - {"prompt"}
                               if all(isinstance(r[k], (str, int, float, bool)) for r in out))
    return [{k: r[k] for k in keep} for r in out]


def load_image_captions(path: str | Path, data_cfg: Any = None, role: str = "train") -> List[Dict[str, Any]]:
    """[{"image": absolute Path, "caption"}]; image paths are relative to the data file and must exist."""
    recs = _records(path, data_cfg, role, ("image_caption",))
    src = recs.source
    base = Path(src.path).parent if src.path and src.kind not in ("disk",) else Path(src.path or ".")
    out = []
    for where, rec in recs:
        img = (base / rec["image"]).resolve()
        if not img.is_file():
            raise DataError(f"{where}: field 'image': file not found: {img}")
        out.append({"image": img, "caption": rec["caption"]})
    if not out:
        raise DataError(f'{src.name}: no records; an image_caption file needs lines like '
                        '{"image": "a.png", "caption": ...}')
    return out


def split_paths(data_cfg: Any) -> Dict[str, Optional[str]]:
    return {"train": data_cfg.train, "validation": data_cfg.get("validation"), "test": data_cfg.get("test")}
