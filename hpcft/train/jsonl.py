"""Reading JSONL datasets with errors that name the file, the line and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Tuple

from hpcft.errors import ConfigError


class DataError(ConfigError):
    """A malformed dataset record (file, line and field named)."""


def read_jsonl(path: str | Path) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, record) for every non-blank line; DataError on invalid JSON or a non-object line."""
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def require(path: str | Path, lineno: int, rec: Dict[str, Any], fields: Sequence[str], fmt: str) -> None:
    """DataError naming the first of `fields` missing from rec (or not a string)."""
    for f in fields:
        if f not in rec:
            raise DataError(f"{path}:{lineno}: missing field '{f}' for data.format={fmt} (needs {', '.join(fields)})")
        if not isinstance(rec[f], str) and fmt != "messages":
            raise DataError(f"{path}:{lineno}: field '{f}' must be a string, got {type(rec[f]).__name__}")
