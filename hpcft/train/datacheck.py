"""The data checks of `hpcft submit` (and `--dry-run`), run before any ledger row or Slurm job exists.

- `check_sources`: every split names something readable (file, save_to_disk directory, cached hub dataset), and
  data.columns / data.template are known (hpcft.jobs.preflight.check_data).
- `scan`: the first SAMPLE records of every split (at most SAMPLE_SECONDS of reading) parse, have a format the
  method trains on (data.format, or detected) and its fields (hpcft.jobs.preflight.scan_data).
- `preview_lines`: what `--dry-run` prints: per split the record count and the format, and one training example
  rendered as the trainer will see it, with the part that gets no loss (the prompt) marked.

Every refusal is a ConfigError of one line `data.<split>: <file:line or record>: <problem>; <fix>`.
Light: no torch; `datasets` only for Parquet / CSV / Arrow sources, transformers only for the dry-run example.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from hpcft.errors import ConfigError
from hpcft.train.jsonl import DataError

SAMPLE = 200  # records read per split at submit (the trainer reads them all)
SAMPLE_SECONDS = 10.0  # and never longer than this per split
SPLITS = ("train", "validation", "test")
MASK_OPEN, MASK_CLOSE = "\u27e6", "\u27e7"  # ⟦ ... ⟧ around the tokens without loss in the dry-run example


@dataclass
class SplitReport:
    role: str
    spec: str
    kind: str  # hpcft.train.sources.KINDS
    name: str
    format: str
    sampled: int
    first: Dict[str, Any]  # the first normalised record


def _cfg_columns(cfg) -> Dict[str, str]:
    from omegaconf import OmegaConf

    cols = cfg.data.get("columns")
    if cols is None:
        return {}
    return dict(OmegaConf.to_container(cols, resolve=True)) if not isinstance(cols, dict) else dict(cols)


def _accepted(cfg) -> Tuple[str, ...]:
    from hpcft.config.methods import METHOD_SPECS

    spec = METHOD_SPECS.get(str(cfg.method.name))
    return tuple(spec.formats) if spec else ()


def check_sources(cfg) -> None:
    """data.train is set, every split resolves to a readable source, data.columns and data.template are known."""
    from hpcft.train import formats as F
    from hpcft.train import sources
    from hpcft.train.encode import TEMPLATES

    d = cfg.data
    if d.get("train") in (None, ""):
        raise ConfigError("data.train=None: is required; set data.train=/path/to/train.jsonl (or .json, .parquet, "
                          ".csv, a save_to_disk directory, hf:OWNER/NAME)")
    template = str(d.get("template") or "auto")
    if template not in TEMPLATES:
        raise ConfigError(f"data.template={template}: unknown template; use data.template={'|'.join(TEMPLATES)}")
    try:
        F.check_columns(_cfg_columns(cfg))
    except DataError as e:
        raise ConfigError(str(e)) from None
    for role in SPLITS:
        value = d.get(role)
        if value in (None, ""):
            continue
        try:
            sources.resolve(value, role)
        except DataError as e:
            raise ConfigError(f"data.{role}={e}") from None  # e starts with the value: key=value: problem


_MEMO: Dict[tuple, SplitReport] = {}


def _located(msg: str, value: str) -> str:
    """A reader's message `<file>:<line> (record N): problem` as `line <line> (record N): problem` (the key=value
    in front already names the file)."""
    import re

    m = re.match(r"^(.*?)(?::(\d+))?(?: \(record (\d+)\))?: (.*)$", msg)
    if not m or not m.group(1) or not (m.group(2) or m.group(3)) and m.group(1) not in (value, os.path.expanduser(value)):
        return msg
    line, record, rest = m.group(2), m.group(3), m.group(4)
    where = " ".join(x for x in (line and f"line {line}", record and (f"(record {record})" if line else
                                                                       f"record {record}")) if x)
    return f"{where}: {rest}" if where else rest


def _scan_split(role: str, value: Any, fmt: str, columns: Dict[str, str], accepted: Tuple[str, ...]) -> SplitReport:
    from hpcft.train.data import Records

    try:
        st = os.stat(os.path.expanduser(str(value)))
        stamp: Any = (st.st_size, st.st_mtime_ns)
    except OSError:
        stamp = None
    key = (role, str(value), fmt, tuple(sorted(columns.items())), accepted, stamp)
    if stamp is not None and key in _MEMO:  # a sweep scans the same files once
        return _MEMO[key]
    try:
        recs = Records(value, fmt, columns, role=role, accepted=accepted)
        first: Optional[Dict[str, Any]] = None
        n, t0 = 0, time.monotonic()
        for _, rec in recs.read(SAMPLE):
            first = rec if first is None else first
            n += 1
            if time.monotonic() - t0 > SAMPLE_SECONDS:
                break
    except DataError as e:
        raise ConfigError(f"data.{role}={value}: {_located(str(e), str(value))}") from None
    if first is None:
        raise ConfigError(f"data.{role}={value}: no records (the {role} split is empty); "
                          "point it at a file with records")
    rep = SplitReport(role, str(value), recs.source.kind, recs.source.name, recs.format, n, first)
    if stamp is not None:
        _MEMO[key] = rep
    return rep


def scan(cfg) -> List[SplitReport]:
    """The first records of every split, checked for the method (see the module doc)."""
    fmt = str(cfg.data.get("format") or "auto")
    columns = _cfg_columns(cfg)
    accepted = _accepted(cfg)
    out = []
    for role in SPLITS:
        value = cfg.data.get(role)
        if value not in (None, ""):
            out.append(_scan_split(role, value, fmt, columns, accepted))
    return out


# -------------------------------------------------------------------------------------------------- dry-run

def preview_lines(cfg) -> List[str]:
    """Lines for `hpcft submit --dry-run`: records and format per split, one rendered training example."""
    lines, reports = split_lines(cfg)
    return lines + _example_lines(cfg, reports[0])


def split_lines(cfg) -> Tuple[List[str], List[SplitReport]]:
    """Records and format per split (`# data.train: NAME (KIND, N records), format F`), light: no tokenizer (the web
    console shows them beside the Create button)."""
    from hpcft.train import sources

    lines = []
    reports = scan(cfg)
    for rep in reports:
        try:
            n = sources.count(sources.open_split(rep.spec, rep.role))
        except DataError as e:
            raise ConfigError(f"data.{rep.role}: {e}") from None
        count = f"{n:,} record{'' if n == 1 else 's'}" if n is not None else "too large to count here"
        lines.append(f"# data.{rep.role}: {rep.name} ({rep.kind}, {count}), format {rep.format}")
    return lines, reports


def _example_lines(cfg, rep: SplitReport) -> List[str]:
    from hpcft.train import formats as F

    try:
        tok = _local_tokenizer(cfg.model)
    except Exception as e:  # the tokenizer may live only on the cluster: the check above still holds
        src = cfg.model.get("tokenizer") or cfg.model.get("path")
        why = "not on this machine" if isinstance(e, OSError) else " ".join(str(e).split())[:160] or type(e).__name__
        return [f"# (no rendered example: tokenizer {src}: {why}; the data check above holds)"]
    fmt, rec = rep.format, rep.first
    if fmt in F.PREFERENCE_FORMATS or fmt == "prompt":
        out = ["# example (data.train, first record, as the trainer's chat template / text shows it):"]
        prompt = rec["prompt"]
        head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) \
            if isinstance(prompt, list) else prompt
        out += ["## prompt:"] + (head.splitlines() or [""])
        for k in ("chosen", "rejected"):
            if k in rec:
                v = rec[k]
                text = v
                if isinstance(v, list):  # the answer as it follows the prompt in the rendered conversation
                    full = tok.apply_chat_template(prompt + v, tokenize=False)
                    text = full[len(head):] if full.startswith(head) else full
                out += [f"## {k}:"] + (text.splitlines() or [""])
        return out
    if fmt == "image_caption":
        return [f"# example (data.train, first record): image {rec['image']}, caption {rec['caption']!r}"]
    from hpcft.train.encode import encode_record, template_for

    loss_on_all = str(cfg.method.name) == "pretrain"
    template = str(cfg.data.get("template") or "auto")
    ids, labels = encode_record(rec, fmt, tok, loss_on_all=loss_on_all, template=template)
    seq = int(cfg.training.sequence_length)
    cut = len(ids) > seq
    ids, labels = ids[:seq], labels[:seq]
    masked = sum(1 for x in labels if x == -100)
    how = f", template {template_for(template, fmt, tok)}" if fmt in ("prompt_response", "alpaca") else ""
    head = (f"# example (data.train, first record{how}): {len(ids)} tokens{' (truncated)' if cut else ''}, "
            f"{len(ids) - masked} with loss; {MASK_OPEN}...{MASK_CLOSE} marks the prompt, masked out of the loss")
    return [head] + render_masked(tok, ids, labels).splitlines()


def _local_tokenizer(model_cfg):
    """The job's tokenizer as hpcft.train.modeling.load_tokenizer gives it, from local files only (a dry run
    downloads nothing and runs no remote code)."""
    src = model_cfg.get("tokenizer") or model_cfg.get("path")
    if src == "bytes":
        from hpcft.train.tokenizer import byte_tokenizer

        return byte_tokenizer()
    from transformers import AutoTokenizer

    from hpcft.train.tokenizer import CHAT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
    if tok.chat_template is None:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def render_masked(tok, ids, labels) -> str:
    """The decoded tokens, the runs without loss between MASK_OPEN and MASK_CLOSE."""
    out, run, masked = [], [], None
    for t, lab in zip(ids, labels, strict=True):
        m = lab == -100
        if masked is not None and m != masked:
            out.append((masked, tok.decode(run)))
            run = []
        masked = m
        run.append(int(t))
    if run:
        out.append((masked, tok.decode(run)))
    return "".join(f"{MASK_OPEN}{text}{MASK_CLOSE}" if m else text for m, text in out)
