"""Datasets for causal-LM training: any source and format -> token ids + labels, packing, deterministic shuffling
and rank sharding.

Sources (`hpcft.train.sources`): JSONL, JSON arrays, Parquet, CSV, `save_to_disk` directories, cached hub datasets.
Formats (`data.format`, `hpcft.train.formats`; data.columns maps other field names):
  text             {"text"}                                  loss on every token
  prompt_response  {"prompt","response"}                     loss on the response (+ eos)
  alpaca           {"instruction","input"?,"output"}         loss on the output (+ eos)
  messages         {"messages": [{"role","content"}, ...]}   rendered with the chat template, loss on assistant turns
  sharegpt         {"conversations": [{"from","value"}, ...]}  the same as messages (human/gpt/system/... roles)
  auto             detected from the first record
`data.template` (prompt_response, alpaca): chat = the tokenizer's chat template; alpaca = "### Instruction: ..."; none =
prompt and answer on consecutive lines; auto = chat when the tokenizer has a chat template of its own, else alpaca
for alpaca records and none for prompt/response records.

Packing (`training.packing`): several samples share one sequence of sequence_length tokens; position ids restart at
every sample and attention stays inside it (transformers builds a block-diagonal causal mask from position ids that
restart; flash-attention gets the whole micro-batch as one row, like DataCollatorWithFlattening). The first token
of every packed sample gets no label, so no sample learns from the one before it.

Pretraining reads its tokens from a memory-mapped token file (`hpcft.train.token_cache`), tokenized once.

Every sample keeps its dataset index so that a run can log which samples each step saw. The order of an epoch
is a pure function of (seed, epoch), so a resumed run can skip exactly the batches it already consumed.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from hpcft.train import formats as F
from hpcft.train import sources
from hpcft.train.encode import IGNORE, TEMPLATES, Sample, encode_record, template_for  # noqa: F401  (part of this module's API)
from hpcft.train.jsonl import DataError

SFT_FORMATS = F.SFT_FORMATS
FORMATS = ("text",) + SFT_FORMATS


@dataclass
class Split:
    name: str
    path: str
    format: str
    samples: Sequence[Sample] = field(default_factory=list)
    truncated: int = 0
    packed_from: int = 0  # training.packing: how many samples the packs hold

    def __len__(self) -> int:
        return len(self.samples)


def detect_format(rec: dict[str, Any]) -> str | None:
    return F.detect(rec)


# --------------------------------------------------------------------------------------------------- reading

class Records:
    """The normalised records of one split (hpcft.train.formats), in order, with where each came from. `format`
    is data.format, or the detected one once the first record is read."""

    def __init__(self, spec: Any, fmt: str = "auto", columns: Optional[Mapping[str, str]] = None,
                 role: str = "train", accepted: Sequence[str] = FORMATS):
        self.source = sources.open_split(spec, role)
        self.format = str(fmt)
        self.columns = F.check_columns(columns)
        self.accepted = tuple(accepted)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        return self.read()

    def read(self, limit: Optional[int] = None) -> Iterator[tuple[str, dict[str, Any]]]:
        first = True
        for where, raw in sources.records(self.source, limit):
            rec = F.apply_columns(raw, self.columns)
            try:
                if self.format == "auto":
                    self.format = F.choose(where, rec, "auto", self.accepted)
                elif first:  # data.format given: records of another format are refused with what they look like
                    F.confirm(where, rec, self.format)
                first = False
                out = F.normalize(where, rec, self.format)
            except DataError as e:  # a data.columns entry naming a field the record lacks: say so
                msg = str(e)
                for k, v in self.columns.items():
                    if v not in raw and (f"'{k}'" in msg or "cannot detect" in msg or "look like" in msg):
                        raise DataError(f"{where}: data.columns.{k}={v}, but the record has no field '{v}' (it "
                                        f"has {', '.join(sorted(map(str, raw)))}); fix data.columns.{k}") from None
                raise
            yield where, out


def load_split(path: str | Path, fmt: str, tokenizer, sequence_length: int, name: str = "train",
               loss_on_all: bool = False, columns: Optional[Mapping[str, str]] = None, template: str = "auto",
               token_cache: Optional[Path] = None, log: Optional[Callable[[str], None]] = None) -> Split:
    """Read, check and tokenize one split; samples longer than sequence_length are truncated and counted.

    `fmt="auto"` detects the format from the first record. `loss_on_all` (pretraining) puts the loss on every
    token whatever the format; with `token_cache` (a directory) the tokens then come from a memory-mapped token
    file built once (hpcft.train.token_cache) instead of lists held in memory. DataError (file:line, field) on a
    malformed record.
    """
    recs = Records(path, fmt, columns, role=name)
    split = Split(name=name, path=str(path), format=recs.format)
    if loss_on_all and token_cache is not None:
        from hpcft.train import token_cache as TC

        tf = TC.build_or_open(recs, tokenizer, Path(token_cache), log=log)
        split.format = tf.format
        split.samples = TC.TokenSamples(tf, sequence_length)
        split.truncated = split.samples.truncated
    else:
        for _, rec in recs:
            ids, labels = encode_record(rec, recs.format, tokenizer, loss_on_all=loss_on_all, template=template)
            if len(ids) > sequence_length:
                ids, labels = ids[:sequence_length], labels[:sequence_length]
                split.truncated += 1
            split.samples.append(Sample(len(split.samples), ids, labels))
        split.format = recs.format
    if not len(split.samples):
        raise DataError(f"{recs.source.name}: no records (data.{name} is empty)")
    return split


# --------------------------------------------------------------------------------------------------- packing

def pack_indices(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sample indices grouped into packs of at most `capacity` tokens: best-fit decreasing (every sample, longest
    first, goes into the fullest pack it still fits in). Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    packs: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, pack number), sorted
    for i in order:
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, b = free.pop(k)
            packs[b].append(i)
            room -= n
        else:
            b, room = len(packs), capacity - n
            packs.append([i])
        if room > 0:
            bisect.insort(free, (room, b))
    return packs


class PackedSamples(Sequence):
    """Packs of samples read on demand from `base`: tokens concatenated, position ids restarting per sample, no
    label on the first token of each sample."""

    def __init__(self, base: Sequence[Sample], packs: list[list[int]]):
        self.base, self.packs = base, packs

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, j: int) -> Sample:  # type: ignore[override]
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in self.packs[j]:
            s = self.base[i]
            n = len(s.input_ids)
            ids.extend(int(t) for t in s.input_ids)
            labels.append(IGNORE)
            labels.extend(int(t) for t in s.labels[1:])
            pos.extend(range(n))
        return Sample(j, ids, labels, pos)


def sample_lengths(samples: Sequence[Sample]) -> Sequence[int]:
    lengths = getattr(samples, "lengths", None)
    return lengths() if callable(lengths) else [len(s.input_ids) for s in samples]


def pack_split(split: Split, capacity: int) -> Split:
    """The split with its samples packed into sequences of at most `capacity` tokens (training.packing)."""
    packs = pack_indices(sample_lengths(split.samples), capacity)
    return Split(name=split.name, path=split.path, format=split.format, samples=PackedSamples(split.samples, packs),
                 truncated=split.truncated, packed_from=len(split.samples))


# ------------------------------------------------------------------------------------------ order and sharding

def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) that depends only on (seed, epoch)."""
    order = list(range(n))
    random.Random(f"hpcft-{seed}-{epoch}").shuffle(order)
    return order


def shard(indices: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share (DistributedSampler-like): padded by wrapping around so every rank gets the same count."""
    idx = list(indices)
    if world > 1:
        pad = (-len(idx)) % world
        idx += (idx * (pad // max(len(idx), 1) + 1))[:pad]
    return idx[rank::world]


def micro_batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


def steps_per_epoch(n: int, batch_size: int, accumulation: int, world: int) -> int:
    """Optimizer steps in one epoch; the micro-batches that do not fill a whole accumulation are dropped."""
    per_rank = -(-n // world)
    micro = -(-per_rank // batch_size)
    return micro // accumulation


def epoch_batches(n: int, seed: int, epoch: int, batch_size: int, accumulation: int, rank: int = 0,
                  world: int = 1) -> list[list[list[int]]]:
    """The epoch's optimizer steps for this rank: a list of steps, each a list of `accumulation` micro-batches
    of dataset indices."""
    mbs = micro_batches(shard(epoch_order(n, seed, epoch), rank, world), batch_size)
    k = steps_per_epoch(n, batch_size, accumulation, world)
    return [mbs[i * accumulation:(i + 1) * accumulation] for i in range(k)]


def flattens(packing: bool, attn_implementation: str) -> bool:
    """Packed micro-batches go to the model as one row without padding (flash-attention's variable-length path,
    the layout of transformers' DataCollatorWithFlattening: position ids restart per sample, flash-attention reads
    the sample bounds from them) when the model attends with a flash-attention kernel; other attentions get one row
    per pack with the block-diagonal mask transformers builds from the restarting position ids."""
    return bool(packing) and str(attn_implementation).startswith("flash_attention")


def collate(samples: Sequence[Sample], pad_id: int, flatten: bool = False) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding).

    Packed samples (with position_ids): input_ids, position_ids, labels and no attention_mask, so that the model
    builds the block-diagonal causal mask from the restarting position ids (the padding is a segment of its own).
    `flatten` (flash-attention): the whole micro-batch as one row without padding."""
    import torch

    if samples and samples[0].position_ids is not None:
        if flatten:
            row = lambda attr: torch.tensor([int(t) for s in samples for t in getattr(s, attr)],  # noqa: E731
                                            dtype=torch.long)[None]
            return {"input_ids": row("input_ids"), "position_ids": row("position_ids"), "labels": row("labels")}
        width = max(len(s.input_ids) for s in samples)
        ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
        pos = torch.arange(width, dtype=torch.long).repeat(len(samples), 1)
        labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
        for i, s in enumerate(samples):
            n = len(s.input_ids)
            ids[i, :n] = torch.tensor(s.input_ids, dtype=torch.long)
            pos[i, :n] = torch.tensor(s.position_ids, dtype=torch.long)
            pos[i, n:] = torch.arange(width - n)
            labels[i, :n] = torch.tensor(s.labels, dtype=torch.long)
        return {"input_ids": ids, "position_ids": pos, "labels": labels}
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = torch.as_tensor(s.input_ids, dtype=torch.long)
        mask[i, :n] = 1
        labels[i, :n] = torch.as_tensor(s.labels, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


# --------------------------------------------------------------------------------------------- a job's splits

def load_job_split(cfg, name: str, tok, log: Optional[Callable[[str], None]] = None) -> Split:
    """One split of a causal-LM job as its config says: source, format, data.columns, data.template; pretraining
    from the memory-mapped token file (data.memmap); the train split packed when training.packing is set."""
    d, t = cfg.data, cfg.training
    pretrain = str(cfg.method.name) == "pretrain"
    cache = None
    if pretrain and d.get("memmap", True):
        from hpcft.train.token_cache import default_dir

        cache = Path(str(d.get("token_cache_dir"))).expanduser() if d.get("token_cache_dir") else default_dir()
    sp = load_split(d.get(name), str(d.get("format") or "auto"), tok, int(t.sequence_length), name, pretrain,
                    columns=d.get("columns"), template=str(d.get("template") or "auto"), token_cache=cache, log=log)
    if name == "train" and t.get("packing"):
        sp = pack_split(sp, int(t.sequence_length))
        if log:
            total = int(sum(sample_lengths(sp.samples.base)))
            log(f"[hpcft] packing: {sp.packed_from:,} samples into {len(sp):,} sequences of at most "
                f"{int(t.sequence_length)} tokens ({total / max(len(sp) * int(t.sequence_length), 1):.0%} filled)")
    return sp
