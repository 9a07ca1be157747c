"""Pretraining corpora tokenized once into a memory-mapped token file, shared by all ranks and later runs.

    <dir>/<key>.bin        every record's tokens one after another (uint16, or uint32 for vocabularies > 65535)
    <dir>/<key>.idx.npy    int64 offsets: record i is tokens[offsets[i]:offsets[i+1]]
    <dir>/<key>.json       what it holds (written last: a token file without it is not finished)

`key` hashes the split's content (hpcft.train.sources.fingerprint), the tokenizer, the format and the field mapping,
so a changed file or tokenizer builds a new one and an unchanged one is reused by every later run. Whichever rank
takes the lock first builds it (the others wait on the lock, then open it); ranks map it read-only, so the operating
system keeps one copy in its page cache for all of them instead of a Python list of tokens on every rank.
Default directory: <HPCFT_HOME>/cache/tokens (`data.token_cache_dir`); it must be shared by the nodes of a job.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

VERSION = 1
BATCH = 1024  # records tokenized at once


def default_dir() -> Path:
    from hpcft import paths

    return paths.home() / "cache" / "tokens"


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256(type(tok).__name__.encode())
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tok.get_vocab().items())).encode())
    h.update(repr((tok.bos_token_id, tok.eos_token_id, getattr(tok, "chat_template", None))).encode())
    return h.hexdigest()


@dataclass
class TokenFile:
    key: str
    tokens: Any  # np.memmap of token ids
    offsets: Any  # int64 offsets (memory-mapped)
    format: str
    meta: dict

    @property
    def records(self) -> int:
        return len(self.offsets) - 1


def _paths(d: Path, key: str) -> tuple[Path, Path, Path]:
    return d / f"{key}.bin", d / f"{key}.idx.npy", d / f"{key}.json"


def _open(d: Path, key: str) -> Optional[TokenFile]:
    import numpy as np

    bin_, idx, meta_p = _paths(d, key)
    try:
        meta = json.loads(meta_p.read_text())
        offsets = np.load(idx, mmap_mode="r")
        n = int(offsets[-1])
        tokens = np.memmap(bin_, dtype=meta["dtype"], mode="r", shape=(n,)) if n else np.zeros(0, meta["dtype"])
    except (OSError, ValueError, KeyError):  # not built (yet), or a part removed: build it again
        return None
    return TokenFile(key, tokens, offsets, meta["format"], meta)


def build_or_open(recs, tok, directory: Path, log: Optional[Callable[[str], None]] = None) -> TokenFile:
    """The token file of `recs` (hpcft.train.data.Records, loss on every token) for `tok`: opened when it exists,
    else built under a lock (one builder; the others wait and open it)."""
    import fcntl

    from hpcft.train import sources

    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    parts = [f"v{VERSION}", sources.fingerprint(recs.source), tokenizer_fingerprint(tok), recs.format,
             json.dumps(recs.columns, sort_keys=True)]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:40]
    found = _open(directory, key)
    if found is not None:
        return found
    with open(directory / f"{key}.lock", "a+") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)  # POSIX lock: also across the nodes of a shared file system
        try:
            found = _open(directory, key)  # another rank or job built it while this one waited
            if found is not None:
                return found
            _build(recs, tok, directory, key, log)
        finally:
            fcntl.lockf(lock, fcntl.LOCK_UN)
    tf = _open(directory, key)
    assert tf is not None
    return tf


def _build(recs, tok, directory: Path, key: str, log: Optional[Callable[[str], None]]) -> None:
    import numpy as np

    from hpcft.train.encode import bos, encode_record, eos

    dtype = np.uint16 if len(tok) <= 65535 else np.uint32
    bin_, idx, meta_p = _paths(directory, key)
    tmp_bin = bin_.with_suffix(f".bin.tmp{os.getpid()}")
    offsets = [0]
    t0 = last = time.time()
    head, tail = bos(tok), eos(tok)

    def flush(batch: list[dict], out) -> None:
        if recs.format == "text":
            encoded = tok([r["text"] for r in batch], add_special_tokens=False)["input_ids"]
            seqs = [head + list(e) + tail for e in encoded]
        else:
            seqs = [encode_record(r, recs.format, tok, loss_on_all=True)[0] for r in batch]
        for ids in seqs:
            np.asarray(ids, dtype=dtype).tofile(out)
            offsets.append(offsets[-1] + len(ids))

    try:
        with open(tmp_bin, "wb") as out:
            batch: list[dict] = []
            for _, rec in recs:
                batch.append(rec)
                if len(batch) >= BATCH:
                    flush(batch, out)
                    batch = []
                    if log and time.time() - last > 10:
                        last = time.time()
                        log(f"[hpcft] tokenizing {recs.source.name}: {len(offsets) - 1:,} records, "
                            f"{offsets[-1]:,} tokens ({time.time() - t0:.0f} s)")
            if batch:
                flush(batch, out)
            out.flush()
            os.fsync(out.fileno())
        tmp_idx = idx.with_name(f"{key}.idx.tmp{os.getpid()}.npy")
        np.save(tmp_idx, np.asarray(offsets, dtype=np.int64))
        tmp_bin.replace(bin_)
        tmp_idx.replace(idx)
        meta = {"version": VERSION, "source": recs.source.name, "format": recs.format, "records": len(offsets) - 1,
                "tokens": offsets[-1], "dtype": np.dtype(dtype).name, "built_s": round(time.time() - t0, 2)}
        tmp_meta = meta_p.with_suffix(f".json.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        tmp_meta.replace(meta_p)  # last: the token file is complete
    finally:
        tmp_bin.unlink(missing_ok=True)
    if log:
        log(f"[hpcft] token file for {recs.source.name}: {meta['records']:,} records, {meta['tokens']:,} tokens "
            f"-> {bin_} ({meta['built_s']} s)")


class TokenSamples(Sequence):
    """The samples of a token file (labels = input ids), truncated to `sequence_length`, read on demand."""

    def __init__(self, tf: TokenFile, sequence_length: int):
        import numpy as np

        self.tf, self.seq = tf, int(sequence_length)
        self.truncated = int((np.diff(tf.offsets) > self.seq).sum())

    def __len__(self) -> int:
        return self.tf.records

    def lengths(self):
        import numpy as np

        return np.minimum(np.diff(self.tf.offsets), self.seq)

    def __getitem__(self, i: int):  # type: ignore[override]
        import numpy as np

        from hpcft.train.encode import Sample

        a = int(self.tf.offsets[i])
        b = min(int(self.tf.offsets[i + 1]), a + self.seq)
        ids = np.asarray(self.tf.tokens[a:b], dtype=np.int64)
        return Sample(int(i), ids, ids)
