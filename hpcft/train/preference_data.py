"""Datasets of the preference / RL / text-to-image methods, read with errors naming file, line and field.

- preference  {"prompt", "chosen", "rejected"}         (method=reward, method=dpo)
- prompt      {"prompt"} (other string fields are kept) (method=grpo; they reach the reward functions as kwargs)
- image_caption {"image": path relative to the JSONL, "caption"}  (method=t2i_lora)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from hpcft.train.jsonl import DataError, read_jsonl, require

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected")


def load_preference(path: str | Path) -> List[Dict[str, str]]:
    """[{"prompt", "chosen", "rejected"}] from a preference JSONL file."""
    out = []
    for lineno, rec in read_jsonl(path):
        require(path, lineno, rec, PREFERENCE_FIELDS, "preference")
        out.append({k: rec[k] for k in PREFERENCE_FIELDS})
    if not out:
        raise DataError(f"{path}: no records; a preference file needs lines like "
                        '{"prompt": ..., "chosen": ..., "rejected": ...}')
    return out


def load_prompts(path: str | Path) -> List[Dict[str, Any]]:
    """[{"prompt", ...}] from a JSONL file; every record needs a string "prompt". Extra string/number fields are
    kept when every record has them (so a dataset column can feed a reward function)."""
    recs = []
    for lineno, rec in read_jsonl(path):
        require(path, lineno, rec, ("prompt",), "prompt")
        recs.append(rec)
    if not recs:
        raise DataError(f'{path}: no records; a prompt file needs lines like {{"prompt": ...}}')
    common = set(recs[0])
    for r in recs[1:]:
        common &= set(r)
    keep = ["prompt"] + sorted(k for k in common - {"prompt"}
                               if all(isinstance(r[k], (str, int, float, bool)) for r in recs))
    return [{k: r[k] for k in keep} for r in recs]


def load_image_captions(path: str | Path) -> List[Dict[str, Any]]:
    """[{"image": absolute Path, "caption"}]; image paths are relative to the JSONL file and must exist."""
    path = Path(path)
    out = []
    for lineno, rec in read_jsonl(path):
        require(path, lineno, rec, ("image", "caption"), "image_caption")
        img = (path.parent / rec["image"]).resolve()
        if not img.is_file():
            raise DataError(f"{path}:{lineno}: field 'image': file not found: {img}")
        out.append({"image": img, "caption": rec["caption"]})
    if not out:
        raise DataError(f'{path}: no records; an image_caption file needs lines like {{"image": "a.png", "caption": ...}}')
    return out


def split_paths(data_cfg: Any) -> Dict[str, Optional[str]]:
    return {"train": data_cfg.train, "validation": data_cfg.get("validation"), "test": data_cfg.get("test")}
