"""Reading JSONL datasets with errors that name the file, the line and what is wrong."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Sequence, Tuple

from hpcft.errors import ConfigError


class DataError(ConfigError):
    """A malformed dataset record (file, line and field named)."""


def read_jsonl(path: str | Path) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """(line number, record) for every non-blank line; DataError on bytes that are not UTF-8, invalid JSON or a
    line that is not an object."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (a JSON array belongs in one [...] file)" if line.lstrip().startswith("[") else ""
                raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg}){hint}; fix or remove that line") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}; "
                                "one {...} object per line")
            yield lineno, rec


def require(path: str | Path, lineno: int, rec: Dict[str, Any], fields: Sequence[str], fmt: str) -> None:
    """DataError naming the first of `fields` missing from rec (or not a string)."""
    for f in fields:
        if f not in rec:
            raise DataError(f"{path}:{lineno}: missing field '{f}' for data.format={fmt} (needs {', '.join(fields)})")
        if not isinstance(rec[f], str) and fmt != "messages":
            raise DataError(f"{path}:{lineno}: field '{f}' must be a string, got {type(rec[f]).__name__}")
