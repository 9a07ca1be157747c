"""Datasets for causal-LM training: JSONL -> token ids + labels, deterministic shuffling and rank sharding.

Formats (`data.format`):
  text             {"text"}                                  loss on every token
  prompt_response  {"prompt","response"}                     loss on the response (+ eos)
  alpaca           {"instruction","input"?,"output"}         loss on the output (+ eos)
  messages         {"messages": [{"role","content"}, ...]}   rendered with the chat template, loss on assistant turns
  auto             detected from the first record

Every sample keeps its dataset index so that a run can log which samples each step saw. The order of an epoch
is a pure function of (seed, epoch), so a resumed run can skip exactly the batches it already consumed.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcft.train.jsonl import DataError, read_jsonl, require

IGNORE = -100
SFT_FORMATS = ("prompt_response", "alpaca", "messages")
FORMATS = ("text",) + SFT_FORMATS

ALPACA_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class Sample:
    index: int  # position in the split (0-based record number, blank lines skipped)
    input_ids: list[int]
    labels: list[int]


@dataclass
class Split:
    name: str
    path: str
    format: str
    samples: list[Sample] = field(default_factory=list)
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.samples)


def detect_format(rec: dict[str, Any]) -> str | None:
    if "messages" in rec:
        return "messages"
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if "prompt" in rec and "response" in rec:
        return "prompt_response"
    if "text" in rec:
        return "text"
    return None


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _bos(tok) -> list[int]:
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def _eos(tok) -> list[int]:
    return [tok.eos_token_id] if tok.eos_token_id is not None else []


def _render(tok, messages, add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _message_pieces(tok, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_answer) pieces, by rendering growing prefixes."""
    pieces: list[tuple[str, bool]] = []
    prev = ""
    for i, m in enumerate(messages):
        full = _render(tok, messages[: i + 1], False)
        if m["role"] == "assistant":
            head = _render(tok, messages[:i], True) if i > 0 else ""
            if i > 0 and head.startswith(prev) and full.startswith(head):
                pieces.append((head[len(prev):], False))
                pieces.append((full[len(head):], True))
            elif full.startswith(prev):
                pieces.append((full[len(prev):], True))
            else:
                return [(full, True)]
        else:
            if not full.startswith(prev):
                return [(full, False)]
            pieces.append((full[len(prev):], False))
        prev = full
    return pieces


def encode_record(rec: dict[str, Any], fmt: str, tok, loss_on_all: bool = False) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one validated record, before truncation."""
    if fmt == "text":
        ids = _bos(tok) + _ids(tok, rec["text"]) + _eos(tok)
        return ids, list(ids)
    if fmt in ("prompt_response", "alpaca"):
        if fmt == "prompt_response":
            prompt, answer = rec["prompt"] + "\n", rec["response"]
        else:
            tmpl = ALPACA_WITH_INPUT if rec.get("input") else ALPACA_NO_INPUT
            prompt, answer = tmpl.format(instruction=rec["instruction"], input=rec.get("input", "")), rec["output"]
        p = _bos(tok) + _ids(tok, prompt)
        a = _ids(tok, answer) + _eos(tok)
        ids = p + a
        return ids, (list(ids) if loss_on_all else [IGNORE] * len(p) + a)
    if fmt == "messages":
        ids: list[int] = []
        labels: list[int] = []
        for text, train in _message_pieces(tok, rec["messages"]):
            t = _ids(tok, text)
            ids += t
            labels += t if (train or loss_on_all) else [IGNORE] * len(t)
        eos = _eos(tok)
        if eos and (not ids or ids[-1] != eos[0]):
            ids += eos
            labels += eos
        return ids, labels
    raise DataError(f"unknown data format {fmt!r}; use one of: {', '.join(FORMATS)}")


def _validate(path: str, lineno: int, rec: dict[str, Any], fmt: str) -> None:
    if fmt == "text":
        require(path, lineno, rec, ["text"], fmt)
    elif fmt == "prompt_response":
        require(path, lineno, rec, ["prompt", "response"], fmt)
    elif fmt == "alpaca":
        require(path, lineno, rec, ["instruction", "output"], fmt)
        if "input" in rec and not isinstance(rec["input"], str):
            raise DataError(f"{path}:{lineno}: field 'input' must be a string, got {type(rec['input']).__name__}")
    elif fmt == "messages":
        require(path, lineno, rec, ["messages"], fmt)
        msgs = rec["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise DataError(f"{path}:{lineno}: field 'messages' must be a non-empty list of {{role, content}}")
        for j, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{path}:{lineno}: messages[{j}] must be an object with string 'role' and 'content'")
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{path}:{lineno}: messages has no assistant turn to learn from")
    else:
        raise DataError(f"{path}: unknown data.format={fmt}; use auto|{'|'.join(FORMATS)}")


def load_split(path: str | Path, fmt: str, tokenizer, sequence_length: int, name: str = "train",
               loss_on_all: bool = False) -> Split:
    """Read, validate and tokenize one JSONL split; samples longer than sequence_length are truncated and counted.

    `fmt="auto"` detects the format from the first record. `loss_on_all` (pretraining) puts the loss on every
    token whatever the format. DataError (file:line, field) on a malformed record.
    """
    path = str(path)
    split = Split(name=name, path=path, format=fmt)
    for lineno, rec in read_jsonl(path):
        if split.format == "auto":
            detected = detect_format(rec)
            if detected is None:
                raise DataError(f"{path}:{lineno}: cannot detect the data format from keys {sorted(rec)}; "
                                f"set data.format to one of {', '.join(FORMATS)}")
            split.format = detected
        _validate(path, lineno, rec, split.format)
        ids, labels = encode_record(rec, split.format, tokenizer, loss_on_all=loss_on_all)
        if len(ids) > sequence_length:
            ids, labels = ids[:sequence_length], labels[:sequence_length]
            split.truncated += 1
        split.samples.append(Sample(len(split.samples), ids, labels))
    if not split.samples:
        raise DataError(f"{path}: no records (data.{name} is empty)")
    return split


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


def collate(samples: Sequence[Sample], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s.input_ids)
        ids[i, :n] = torch.tensor(s.input_ids)
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(s.labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
