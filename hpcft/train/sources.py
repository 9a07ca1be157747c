"""Where a data split comes from, and its records one by one, with errors that name the file and the record.

A split (`data.train`, `data.validation`, `data.test`) is one of:

  file.jsonl / .json   one JSON object per line, or one JSON array of objects (told apart by the first character,
                       whatever the extension); read here with the standard json module so that every error names
                       the line and the record
  file.parquet         Parquet (read with `datasets`, streaming: nothing is cached or copied)
  file.csv / .tsv      CSV / TSV with a header row, every value read as text (read with `datasets`, streaming)
  a directory          a Hugging Face dataset saved with `save_to_disk` (a DatasetDict: the split named like the key,
                       e.g. data.validation -> its `validation` split)
  hf:OWNER/NAME[:SPLIT] a hub dataset read from the local Hugging Face datasets cache (HF_DATASETS_CACHE, filled
                       beforehand by `datasets.load_dataset(ID)` on a machine with network); nothing is fetched:
                       the hub is never contacted. A bare OWNER/NAME that is not a local path means the same.

Light: the standard library only; `datasets` is imported for the sources that need it.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

from hpcft.train.jsonl import DataError, read_jsonl

JSON_EXT = (".jsonl", ".json", ".ndjson")
PARQUET_EXT = (".parquet", ".pq")
CSV_EXT = (".csv", ".tsv")
KINDS = ("jsonl", "json", "parquet", "csv", "disk", "hub")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# the split names looked for in a DatasetDict / hub dataset, by the data key that asks
SPLIT_NAMES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
FIX_SOURCE = "use a .jsonl/.json/.parquet/.csv file, a save_to_disk directory or hf:OWNER/NAME"

Record = Dict[str, Any]


@dataclass(frozen=True)
class Source:
    """One resolved split."""

    spec: str  # what the config says
    kind: str  # one of KINDS
    name: str  # how messages name it: the path, or hf:ID[:split]
    path: Optional[str] = None  # file or directory (None for the hub)
    hub_id: Optional[str] = None
    split: Optional[str] = None  # DatasetDict / hub split


# ----------------------------------------------------------------------------------------------------- resolve

def resolve(spec: Any, role: str = "train") -> Source:
    """The source a data value names; DataError (one line) when there is none. `role` (train / validation / test)
    picks the split of a DatasetDict or hub dataset when the value does not name one."""
    s = str(spec).strip()
    if s.startswith("hf:"):
        return _hub(s, s[3:], role)
    p = Path(os.path.expanduser(s))
    if p.is_dir():
        return _disk(s, p, role)
    if p.is_file():
        if not os.access(p, os.R_OK):
            raise DataError(f"{s}: not readable; make it readable (chmod u+r) or copy it")
        ext = p.suffix.lower()
        if ext in PARQUET_EXT:
            return Source(s, "parquet", str(p), path=str(p))
        if ext in CSV_EXT:
            return Source(s, "csv", str(p), path=str(p))
        kind = _sniff_json(p)
        if kind is None:
            raise DataError(f"{s}: not a data file hpcft reads (neither JSON/JSONL nor {ext or 'a known extension'});"
                            f" {FIX_SOURCE}")
        return Source(s, kind, str(p), path=str(p))
    if HUB_ID.fullmatch(s) and not s.lower().endswith(JSON_EXT + PARQUET_EXT + CSV_EXT) and _hub_cached(s):
        return _hub(s, s, role)
    raise DataError(f"{s}: file not found; set it to an existing data file ({FIX_SOURCE})")


def _sniff_json(p: Path) -> Optional[str]:
    """'json' (one array) or 'jsonl' (objects, one a line) by the first non-blank character; None otherwise."""
    with open(p, "rb") as f:
        head = f.read(4096)
    if head.startswith(codecs.BOM_UTF8):
        head = head[3:]
    first = head.lstrip()[:1]
    if first == b"[":
        return "json"
    if first == b"{" or (not first and p.suffix.lower() in JSON_EXT):
        return "jsonl"
    return "jsonl" if p.suffix.lower() in JSON_EXT else None


def _disk(spec: str, p: Path, role: str) -> Source:
    if (p / "dataset_dict.json").is_file():
        splits = json.loads((p / "dataset_dict.json").read_text()).get("splits", [])
        split = next((n for n in SPLIT_NAMES.get(role, (role,)) if n in splits), None)
        if split is None:
            raise DataError(f"{spec}: a saved DatasetDict without a {role} split (it has {', '.join(splits)}); "
                            f"point data.{role} at one split directory, e.g. {p / splits[0]}" if splits else
                            f"{spec}: a saved DatasetDict without splits")
        return Source(spec, "disk", f"{p}[{split}]", path=str(p), split=split)
    if (p / "state.json").is_file() and (p / "dataset_info.json").is_file():
        return Source(spec, "disk", str(p), path=str(p))
    raise DataError(f"{spec}: is a directory, but not a dataset saved with save_to_disk; {FIX_SOURCE}")


def _hub(spec: str, rest: str, role: str) -> Source:
    hub_id, _, split = rest.partition(":")
    if not HUB_ID.fullmatch(hub_id):
        raise DataError(f"{spec}: not a hub dataset id; write hf:OWNER/NAME or hf:OWNER/NAME:SPLIT")
    if not _hub_cached(hub_id):
        raise DataError(f"{spec}: dataset {hub_id} is not in the local Hugging Face datasets cache "
                        f"({_datasets_cache()}); download it beforehand on a machine with network "
                        f"(python -c \"import datasets; datasets.load_dataset('{hub_id}')\") with the same "
                        "HF_HOME / HF_DATASETS_CACHE")
    name = f"hf:{hub_id}" + (f":{split}" if split else "")
    return Source(spec, "hub", name, hub_id=hub_id, split=split or None)


def _datasets_cache() -> Path:
    """HF_DATASETS_CACHE as `datasets` computes it (without importing it)."""
    if os.environ.get("HF_DATASETS_CACHE"):
        return Path(os.path.expanduser(os.environ["HF_DATASETS_CACHE"]))
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expanduser(home)) / "datasets"


def _hub_cached(hub_id: str) -> bool:
    owner, name = hub_id.split("/", 1)
    return any((_datasets_cache() / f"{owner}___{n}").is_dir() for n in {name, _snake(name)})


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


# ----------------------------------------------------------------------------------------------------- records

def records(src: Source, limit: Optional[int] = None) -> Iterator[Tuple[str, Record]]:
    """(where, record) for the first `limit` records (all when None); `where` names the file and the line or
    record number for messages. DataError on anything unreadable."""
    reader = {"jsonl": _jsonl, "json": _json_array, "parquet": _streamed, "csv": _streamed,
              "disk": _arrow, "hub": _arrow}[src.kind]
    n = 0
    for where, rec in reader(src, limit):
        if limit is not None and n >= limit:
            return
        n += 1
        yield where, rec


def _jsonl(src: Source, limit: Optional[int]) -> Iterator[Tuple[str, Record]]:
    for lineno, rec in read_jsonl(src.path):
        yield f"{src.path}:{lineno}", rec


CHUNK = 1 << 20
MAX_RECORD = 64 << 20  # a record this large is surely not meant
_WS = re.compile(r"\s*")


def _json_array(src: Source, limit: Optional[int]) -> Iterator[Tuple[str, Record]]:
    """The objects of one JSON array, decoded one at a time from a growing window of the file (the first records
    of a large file are read without reading all of it); each names its line and its 1-based record number."""
    path = src.path
    dec = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8-sig")()
    buf, pos, line, eof, consumed_bytes = "", 0, 1, False, 0
    f = open(path, "rb")

    def more(n: int) -> bool:
        nonlocal buf, eof, consumed_bytes
        if eof:
            return False
        chunk = f.read(n)
        try:
            buf += utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            bad = consumed_bytes + e.start
            with open(path, "rb") as g:
                ln = g.read(bad).count(b"\n") + 1
            raise DataError(f"{path}:{ln}: not valid UTF-8 (byte {bad}); save the file as UTF-8") from None
        consumed_bytes += len(chunk)
        eof = not chunk
        return True

    def skip_ws() -> None:
        nonlocal pos, line
        while True:
            m = _WS.match(buf, pos)
            line += buf.count("\n", pos, m.end())
            pos = m.end()
            if pos < len(buf) or not more(CHUNK):
                return

    try:
        skip_ws()
        if buf[pos:pos + 1] != "[":
            raise DataError(f"{path}:{line}: expected a JSON array [...] of records")
        pos += 1
        n = 0
        while True:
            skip_ws()
            if buf[pos:pos + 1] == "]":
                return
            if pos >= len(buf):
                raise DataError(f"{path}:{line}: the JSON array is not closed (no ] after record {n}); fix the file")
            if n:
                if buf[pos:pos + 1] != ",":
                    raise DataError(f"{path}:{line}: invalid JSON after record {n} (expected , or ]); "
                                    "fix the file")
                pos += 1
                skip_ws()
            want = CHUNK
            while True:
                try:
                    rec, end = dec.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as e:
                    if len(buf) - pos > MAX_RECORD or not more(want):
                        where = f"{path}:{line + buf.count(chr(10), pos, e.pos)}"
                        if pos >= len(buf):
                            raise DataError(f"{path}:{line}: the JSON array is not closed (no ]); "
                                            "fix the file") from None
                        raise DataError(f"{where} (record {n + 1}): invalid JSON ({e.msg}); fix that record") \
                            from None
                    want *= 2
            n += 1
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{line} (record {n}): expected a JSON object, got {type(rec).__name__}")
            yield f"{path}:{line} (record {n})", rec
            line += buf.count("\n", pos, end)
            pos = end
            if pos > CHUNK:  # drop what has been read
                buf, pos = buf[pos:], 0
    finally:
        f.close()


def _datasets():
    """`datasets`, quiet (no progress bars, no cache notices) and never reaching the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise DataError("reading Parquet, CSV, save_to_disk and hub data needs the `datasets` package; install "
                        "hpcft with its training stack (bash scripts/install, or pip install 'hpcft[train]')") from None

    datasets.config.HF_HUB_OFFLINE = True
    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except Exception:  # an older huggingface_hub without the constant: the environment variable covers it
        pass
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)  # our own one-line errors say it
    return datasets


def _streamed(src: Source, limit: Optional[int]) -> Iterator[Tuple[str, Record]]:
    """Parquet and CSV through `datasets` in streaming mode (no Arrow cache is written)."""
    ds = _datasets()
    kwargs: Dict[str, Any] = {}
    try:
        if src.kind == "csv":  # every value as text, empty cells as "" (not NaN / None)
            sep = "\t" if src.path.lower().endswith(".tsv") else ","
            with open(src.path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f, delimiter=sep), [])
            kwargs = {"sep": sep, "keep_default_na": False,
                      "features": ds.Features({c: ds.Value("string") for c in header})}
        else:
            import pyarrow.parquet as pq

            pq.ParquetFile(src.path)  # a file that is not Parquet: its own message, not a stream of warnings
        it = ds.load_dataset(src.kind, data_files=src.path, split="train", streaming=True, **kwargs)
        for n, rec in enumerate(it, 1):
            yield f"{src.name} (record {n})", rec
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{src.name}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from None
    except Exception as e:  # pyarrow / pandas parse errors: their message says where
        raise DataError(f"{src.name}: unreadable {src.kind.upper()} file ({_cause(e)}); fix or re-export it") \
            from None


def _cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def open_arrow(src: Source):
    """The datasets.Dataset of a save_to_disk directory or a cached hub dataset (memory-mapped, nothing copied)."""
    ds = _datasets()
    try:
        if src.kind == "disk":
            d = ds.load_from_disk(src.path)
            return d[src.split] if src.split else d
        d = ds.load_dataset(src.hub_id, cache_dir=str(_datasets_cache()))  # offline: see _datasets
    except Exception as e:
        raise DataError(f"{src.name}: cannot be read ({_cause(e)})") from None
    if isinstance(d, ds.DatasetDict):
        if src.split:
            if src.split not in d:
                raise DataError(f"{src.name}: no split {src.split!r} (it has {', '.join(d)}); "
                                f"use hf:{src.hub_id}:SPLIT")
            return d[src.split]
        return d
    return d


def _arrow(src: Source, limit: Optional[int]) -> Iterator[Tuple[str, Record]]:
    d = open_arrow(src)
    if isinstance(d, dict):  # a DatasetDict (a dict) without a chosen split
        raise DataError(f"{src.name}: choose a split ({', '.join(d)}): e.g. hf:{src.hub_id}:{next(iter(d))}")
    n_all = len(d)
    rows = d if limit is None else d.select(range(min(limit, n_all)))
    for n, rec in enumerate(rows, 1):
        yield f"{src.name} (record {n})", rec


def hub_split(src: Source, role: str) -> Source:
    """A hub source with its split filled in for `role` when the config did not name one."""
    if src.kind != "hub" or src.split:
        return src
    d = open_arrow(src)
    if not isinstance(d, dict):  # one Dataset (a DatasetDict is a dict)
        return src
    split = next((n for n in SPLIT_NAMES.get(role, (role,)) if n in d), None)
    if split is None:
        raise DataError(f"{src.name}: no {role} split (it has {', '.join(d)}); use hf:{src.hub_id}:SPLIT")
    return Source(src.spec, "hub", f"hf:{src.hub_id}:{split}", hub_id=src.hub_id, split=split)


def open_split(spec: Any, role: str = "train") -> Source:
    """resolve + (hub) the split for `role`."""
    return hub_split(resolve(spec, role), role)


# ------------------------------------------------------------------------------------------------ count, hash

def count(src: Source, max_bytes: int = 1 << 30) -> Optional[int]:
    """The number of records, or None when counting would mean parsing more than `max_bytes` of JSON/CSV."""
    if src.kind == "jsonl":
        n = 0
        with open(src.path, "rb") as f:
            for raw in f:
                n += bool(raw.strip())
        return n
    if src.kind in ("disk", "hub"):
        return len(open_arrow(src))
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(src.path).metadata.num_rows
        except Exception as e:
            raise DataError(f"{src.name}: unreadable PARQUET file ({_cause(e)}); fix or re-export it") from None
    if os.path.getsize(src.path) > max_bytes:
        return None
    return sum(1 for _ in records(src))


def fingerprint(src: Source) -> str:
    """A hash of the split's content (files: their bytes, memoised by size and mtime; Arrow datasets: their
    `datasets` fingerprint), for caches keyed by content."""
    import hashlib

    if src.kind in ("disk", "hub"):
        d = open_arrow(src)
        return hashlib.sha256(f"{src.kind}:{src.name}:{d._fingerprint}".encode()).hexdigest()
    st = os.stat(src.path)
    key = f"{os.path.realpath(src.path)}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"
    memo = _memo_dir() / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".sha256")
    try:
        return memo.read_text().strip()
    except OSError:
        pass
    h = hashlib.sha256()
    with open(src.path, "rb") as f:
        for chunk in iter(lambda: f.read(8 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(digest)
        tmp.replace(memo)
    except OSError:  # a read-only cache: hash again next time
        pass
    return digest


def _memo_dir() -> Path:
    from hpcft import paths

    return paths.home() / "cache" / "hashes"
