"""Record formats: detect a record's format, map the user's field names, check it and bring it to hpcft's form.

`hpcft.config.schema.DATA_FORMATS` lists the formats and their fields. Beyond hpcft's own field names this reads:

  sharegpt             {"conversations": [{"from": "human"|"gpt"|"system"|..., "value"}], "system"?}  (SFT)
  sharegpt_preference  {"conversations": [...], "chosen": {"from": "gpt", "value"}, "rejected": {...}}
  messages             OpenAI-style {"messages": [{"role", "content"}]}; system prompts, several turns, content as
                       a string or a list of {"type": "text", "text"} parts
  preference           {"prompt", "chosen", "rejected"}: strings, or messages (trl's conversational form); without
                       "prompt" the common first messages of chosen and rejected are the prompt
  any other names      data.columns.<hpcft field>=<your field>, e.g. data.columns.prompt=question

Normalised records: text {"text"}; prompt_response {"prompt","response","system"?}; alpaca {"instruction",
"input","output","system"?}; messages and sharegpt {"messages": [{"role","content"}]}; preference and
sharegpt_preference {"prompt","chosen","rejected"} (all strings, or prompt/chosen/rejected as message lists);
prompt {"prompt", extra fields}; image_caption {"image","caption"}.

Every error names the record (`where`: file:line or file (record N)) and the field, on one line. Light: no torch.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from hpcft.config.schema import PREFERENCE_FORMATS, SFT_FORMATS  # noqa: F401  (one definition: the schema's)
from hpcft.train.jsonl import DataError

Record = Dict[str, Any]
Message = Dict[str, str]

# the fields data.columns may map (hpcft field -> the user's field)
COLUMN_FIELDS = ("text", "prompt", "response", "instruction", "input", "output", "system", "messages",
                 "conversations", "chosen", "rejected", "image", "caption")
# ShareGPT speakers -> chat-template roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool", "function": "tool"}
ROLES = ("system", "user", "assistant", "tool")
OPENAI_ROLES = {"developer": "system", "ipython": "tool"}


def detect(rec: Mapping[str, Any]) -> Optional[str]:
    """The format a record's fields say, or None."""
    keys = set(rec)
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt_preference"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "response"} <= keys:
        return "prompt_response"
    if {"image", "caption"} <= keys:
        return "image_caption"
    if "text" in keys:
        return "text"
    if "prompt" in keys:
        return "prompt"
    return None


def check_columns(columns: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    """data.columns as a plain dict; ConfigError for a field hpcft does not know."""
    out: Dict[str, str] = {}
    for field, col in dict(columns or {}).items():
        if col is None:  # data.columns.<field> left at null: the field has hpcft's name
            continue
        if field not in COLUMN_FIELDS:
            raise DataError(f"data.columns.{field}={col}: unknown hpcft field; map one of "
                            f"{', '.join(COLUMN_FIELDS)} (e.g. data.columns.prompt=question)")
        if not isinstance(col, str) or not col:
            raise DataError(f"data.columns.{field}={col}: must be the name of a field of your records")
        out[str(field)] = col
    return out


def apply_columns(rec: Mapping[str, Any], columns: Mapping[str, str]) -> Record:
    """The record with the user's field names replaced by hpcft's (data.columns)."""
    if not columns:
        return dict(rec)
    out = {k: v for k, v in rec.items() if k not in columns.values()}
    for field, col in columns.items():
        if col in rec:
            out[field] = rec[col]
    return out


def choose(where: str, rec: Mapping[str, Any], fmt: str, accepted: Sequence[str]) -> str:
    """The format of a split: data.format, or (auto) the one the first record's fields say, which must be one the
    method trains on."""
    if fmt != "auto":
        return fmt
    if len(accepted) == 1:  # one format possible: check against it
        return accepted[0]
    found = detect(rec)
    if accepted and found not in accepted:  # the accepted format the record comes closest to: its missing field
        from hpcft.config.schema import DATA_FORMATS

        def needs(f: str) -> list:
            return [x for x in DATA_FORMATS.get(f, ()) if not x.endswith("?")]

        near = max(accepted, key=lambda f: len(set(needs(f)) & set(rec)))  # the first of the best
        shared = set(needs(near)) & set(rec)
        other = set(needs(found)) - set(needs(near)) if found else set()
        missing = [x for x in needs(near) if x not in rec]
        if missing and len(shared) > len(other):  # e.g. prompt + chosen: preference without its rejected
            raise _missing(where, missing[0], near, needs(near))
    if found is None:
        raise DataError(f"{where}: cannot detect the data format from fields [{', '.join(sorted(map(str, rec)))}]; "
                        f"set data.format ({'|'.join(accepted)}) or name your fields with data.columns "
                        "(e.g. data.columns.prompt=question)")
    if accepted and found not in accepted:
        raise DataError(f"{where}: records in {found} format (fields {', '.join(sorted(map(str, rec)))}), "
                        f"which this method cannot train on; it needs {' or '.join(accepted)}")
    return found


def confirm(where: str, rec: Mapping[str, Any], fmt: str) -> None:
    """data.format was given: the first record must have that format's fields. When it has another format's,
    say which (a data.train override keeps the format of the data preset, e.g. data=tiny_sft's prompt_response)."""
    try:
        normalize(where, rec, fmt)
    except DataError as e:
        from hpcft.config.schema import DATA_FORMATS

        found = detect(rec)
        fields = {x.rstrip("?") for x in DATA_FORMATS.get(fmt, ())}
        if found is None or not {x for x in DATA_FORMATS.get(found, ()) if not x.endswith("?")} - fields:
            raise  # no field of another format: a malformed record of this one
        raise DataError(f"{where}: the records look like {found}, not data.format={fmt} "
                        f"(fields {', '.join(sorted(map(str, rec)))}); set data.format={found} or data.format=auto "
                        "(data=custom starts from auto)") from e


# ------------------------------------------------------------------------------------------------- checks

def _missing(where: str, field: str, fmt: str, needs: Iterable[str]) -> DataError:
    return DataError(f"{where}: missing field '{field}' for data.format={fmt} (needs {', '.join(needs)}); "
                     f"if your records name it otherwise, map it: data.columns.{field}=YOUR_FIELD")


def _string(where: str, rec: Mapping[str, Any], field: str, fmt: str, needs: Sequence[str],
            optional: bool = False) -> Optional[str]:
    if rec.get(field) is None:  # absent, or null in a columnar file (CSV / Parquet / Arrow)
        if optional:
            return None
        raise _missing(where, field, fmt, needs)
    v = rec[field]
    if not isinstance(v, str):
        raise DataError(f"{where}: field '{field}' must be a string, got {type(v).__name__}")
    return v


def _content(where: str, field: str, v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) for p in v):  # OpenAI content parts
        texts = []
        for p in v:
            if p.get("type", "text") != "text" or not isinstance(p.get("text"), str):
                raise DataError(f"{where}: {field} has a {p.get('type')!r} part; hpcft trains on text parts only")
            texts.append(p["text"])
        return "".join(texts)
    raise DataError(f"{where}: {field} must be a string, got {type(v).__name__}")


def messages(where: str, value: Any, field: str) -> List[Message]:
    """[{"role","content"}] from OpenAI-style {"role","content"} or ShareGPT {"from","value"} messages."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{field}' must be a non-empty list of messages "
                        f"({{role, content}} or {{from, value}})")
    out: List[Message] = []
    for j, m in enumerate(value):
        if isinstance(m, dict) and m.get("from") is not None:
            who = m.get("from")
            role = SHAREGPT_ROLES.get(str(who).lower()) if isinstance(who, str) else None
            if role is None:
                raise DataError(f"{where}: {field}[{j}] has unknown speaker from={who!r}; use one of "
                                f"{', '.join(SHAREGPT_ROLES)}")
            out.append({"role": role, "content": _content(where, f"{field}[{j}].value", m.get("value"))})
        elif isinstance(m, dict) and isinstance(m.get("role"), str) and m.get("content") is not None:
            role = OPENAI_ROLES.get(m["role"], m["role"])
            if role not in ROLES:
                raise DataError(f"{where}: {field}[{j}] has unknown role {m['role']!r}; use "
                                f"{', '.join(ROLES)}")
            out.append({"role": role, "content": _content(where, f"{field}[{j}].content", m["content"])})
        else:
            raise DataError(f"{where}: {field}[{j}] must be an object with string 'role' and 'content' "
                            "(or ShareGPT 'from' and 'value')")
    return out


def _with_system(rec: Mapping[str, Any], where: str, msgs: List[Message]) -> List[Message]:
    system = rec.get("system")
    if system is None or system == "" or (msgs and msgs[0]["role"] == "system"):
        return msgs
    if not isinstance(system, str):
        raise DataError(f"{where}: field 'system' must be a string, got {type(system).__name__}")
    return [{"role": "system", "content": system}] + msgs


def _turns(where: str, v: Any, field: str, role: str) -> Any:
    """A preference answer or prompt: a string, one message object, or a list of messages."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return messages(where, [v], field)
    if isinstance(v, list):
        return messages(where, v, field)
    if v is None:
        raise _missing(where, field, "preference", ("prompt", "chosen", "rejected"))
    raise DataError(f"{where}: field '{field}' must be a string or a list of messages, got {type(v).__name__}")


def _preference(where: str, rec: Mapping[str, Any], fmt: str) -> Record:
    needs = ("conversations", "chosen", "rejected") if fmt == "sharegpt_preference" else ("prompt", "chosen",
                                                                                            "rejected")
    for f in needs[1:]:
        if rec.get(f) is None:
            raise _missing(where, f, fmt, needs)
    chosen = _turns(where, rec["chosen"], "chosen", "assistant")
    rejected = _turns(where, rec["rejected"], "rejected", "assistant")
    if fmt == "sharegpt_preference":
        if rec.get("conversations") is None:
            raise _missing(where, "conversations", fmt, needs)
        prompt: Any = _with_system(rec, where, messages(where, rec["conversations"], "conversations"))
    elif rec.get("prompt") is not None:
        prompt = _turns(where, rec["prompt"], "prompt", "user")
        if isinstance(prompt, list):
            prompt = _with_system(rec, where, prompt)
    elif isinstance(chosen, list) and isinstance(rejected, list):  # implicit prompt: the shared first messages
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        if k == 0:
            raise _missing(where, "prompt", fmt, needs)
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    else:
        raise _missing(where, "prompt", fmt, needs)
    conversational = any(isinstance(x, list) for x in (prompt, chosen, rejected))
    if conversational:  # trl's conversational form: every part a list of messages
        prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        chosen = chosen if isinstance(chosen, list) else [{"role": "assistant", "content": chosen}]
        rejected = rejected if isinstance(rejected, list) else [{"role": "assistant", "content": rejected}]
        for f, turns in (("chosen", chosen), ("rejected", rejected)):
            if not any(m["role"] == "assistant" for m in turns):
                raise DataError(f"{where}: field '{f}' has no assistant message")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def normalize(where: str, rec: Mapping[str, Any], fmt: str) -> Record:
    """The record in hpcft's form for `fmt` (see the module doc); DataError naming record and field."""
    if fmt == "text":
        return {"text": _string(where, rec, "text", fmt, ("text",))}
    if fmt == "prompt_response":
        needs = ("prompt", "response")
        out = {"prompt": _string(where, rec, "prompt", fmt, needs),
               "response": _string(where, rec, "response", fmt, needs)}
        return _keep_system(where, rec, out)
    if fmt == "alpaca":
        needs = ("instruction", "output")
        out = {"instruction": _string(where, rec, "instruction", fmt, needs),
               "input": _string(where, rec, "input", fmt, needs, optional=True) or "",
               "output": _string(where, rec, "output", fmt, needs)}
        return _keep_system(where, rec, out)
    if fmt in ("messages", "sharegpt"):
        field = "messages" if fmt == "messages" else "conversations"
        if rec.get(field) is None:
            raise _missing(where, field, fmt, (field,))
        msgs = _with_system(rec, where, messages(where, rec[field], field))
        if not any(m["role"] == "assistant" for m in msgs):
            raise DataError(f"{where}: {field} has no assistant turn to learn from")
        return {"messages": msgs}
    if fmt in PREFERENCE_FORMATS:
        return _preference(where, rec, fmt)
    if fmt == "prompt":
        if rec.get("prompt") is None:
            raise _missing(where, "prompt", fmt, ("prompt",))
        prompt = _turns(where, rec["prompt"], "prompt", "user")
        return {**{k: v for k, v in rec.items() if k != "prompt"}, "prompt": prompt}
    if fmt == "image_caption":
        needs = ("image", "caption")
        return {"image": _string(where, rec, "image", fmt, needs), "caption": _string(where, rec, "caption", fmt,
                                                                                        needs)}
    raise DataError(f"unknown data.format={fmt}")


def _keep_system(where: str, rec: Mapping[str, Any], out: Record) -> Record:
    system = rec.get("system")
    if system is not None and system != "":
        if not isinstance(system, str):
            raise DataError(f"{where}: field 'system' must be a string, got {type(system).__name__}")
        out["system"] = system
    return out
