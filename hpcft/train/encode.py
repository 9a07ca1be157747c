"""One record -> token ids and labels: the SFT templates (chat, alpaca, none), loss only on the answer tokens
(`IGNORE` elsewhere), bos/eos handling. Shared by the causal-LM datasets (`hpcft.train.data`), the pretraining
token cache (`hpcft.train.token_cache`) and the pre-queue data check (`hpcft.train.datacheck`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from hpcft.config.schema import SFT_FORMATS
from hpcft.train.jsonl import DataError

IGNORE = -100
TEMPLATES = ("auto", "chat", "alpaca", "none")

ALPACA_WITH_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA_NO_INPUT = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class Sample:
    index: int  # position in the split (0-based record number, blank lines skipped); a pack's number when packed
    input_ids: Sequence[int]
    labels: Sequence[int]
    position_ids: Optional[Sequence[int]] = None  # packed samples: restarting at 0 for every sample in the pack


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def bos(tok) -> list[int]:
    return [tok.bos_token_id] if tok.bos_token_id is not None else []


def eos(tok) -> list[int]:
    return [tok.eos_token_id] if tok.eos_token_id is not None else []


def _render(tok, messages, add_generation_prompt: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def has_own_chat_template(tok) -> bool:
    """The tokenizer brings a chat template of its own (not hpcft's minimal fallback)."""
    from hpcft.train.tokenizer import CHAT_TEMPLATE

    t = getattr(tok, "chat_template", None)
    return bool(t) and t != CHAT_TEMPLATE


def template_for(template: str, fmt: str, tok) -> str:
    """chat | alpaca | none: how a prompt_response or alpaca record is rendered (`data.template`)."""
    if template not in TEMPLATES:
        raise DataError(f"data.template={template}: unknown template; use {'|'.join(TEMPLATES)}")
    if template != "auto":
        return template
    if has_own_chat_template(tok):
        return "chat"
    return "alpaca" if fmt == "alpaca" else "none"


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


def _sft_parts(rec: dict[str, Any], fmt: str) -> tuple[str, str, str]:
    """(system, user text, answer) of a prompt_response or alpaca record."""
    if fmt == "prompt_response":
        return rec.get("system") or "", rec["prompt"], rec["response"]
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    return rec.get("system") or "", user, rec["output"]


def _encode_messages(tok, messages: list[dict[str, str]], loss_on_all: bool) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for text, train in _message_pieces(tok, messages):
        t = _ids(tok, text)
        ids += t
        labels += t if (train or loss_on_all) else [IGNORE] * len(t)
    end = eos(tok)
    if end and (not ids or ids[-1] != end[0]):
        ids += end
        labels += end
    return ids, labels


def encode_record(rec: dict[str, Any], fmt: str, tok, loss_on_all: bool = False,
                  template: str = "auto") -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one normalised record, before truncation."""
    if fmt == "text":
        ids = bos(tok) + _ids(tok, rec["text"]) + eos(tok)
        return ids, list(ids)
    if fmt in ("prompt_response", "alpaca"):
        how = template_for(template, fmt, tok)
        system, user, answer = _sft_parts(rec, fmt)
        if how == "chat":
            msgs = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            return _encode_messages(tok, msgs, loss_on_all)
        head = f"{system}\n\n" if system else ""
        if how == "alpaca":
            instruction = rec["instruction"] if fmt == "alpaca" else rec["prompt"]
            tmpl = ALPACA_WITH_INPUT if rec.get("input") else ALPACA_NO_INPUT
            prompt = head + tmpl.format(instruction=instruction, input=rec.get("input", ""))
        else:
            prompt = head + user + "\n"
        p = bos(tok) + _ids(tok, prompt)
        a = _ids(tok, answer) + eos(tok)
        ids = p + a
        return ids, (list(ids) if loss_on_all else [IGNORE] * len(p) + a)
    if fmt in ("messages", "sharegpt"):
        return _encode_messages(tok, rec["messages"], loss_on_all)
    raise DataError(f"unknown data format {fmt!r}; use one of: {', '.join(('text',) + SFT_FORMATS)}")
