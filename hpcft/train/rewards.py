"""GRPO reward functions, chosen by name in `method.reward_functions`.

  length[:N]          1 at N characters (default 20), falling linearly to 0 at 0 or 2N characters
  contains:<word>     1 when the completion contains <word> (case-sensitive), else 0
  format_regex:<re>   1 when the whole completion matches <re> (re.fullmatch, DOTALL), else 0
  char_fraction:<cs>  the fraction of the completion's characters that are in the set <cs> (smooth, easy to learn)
  reward_model        the score of a model trained by method=reward (method.reward_model: its final/ directory)

Each function follows trl's signature f(prompts, completions, **kwargs) -> list[float].
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from hpcft.config.methods import parse_reward_spec
from hpcft.errors import ConfigError



def _text(c: Any) -> str:
    """A completion as text (conversational completions are lists of messages)."""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        return "".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in c)
    return str(c)


def length_reward(target: int) -> Callable:
    def length(prompts=None, completions=None, **kw) -> List[float]:
        return [max(0.0, 1.0 - abs(len(_text(c)) - target) / target) for c in completions]

    length.__name__ = f"length_{target}"
    return length


def contains_reward(word: str) -> Callable:
    def contains(prompts=None, completions=None, **kw) -> List[float]:
        return [1.0 if word in _text(c) else 0.0 for c in completions]

    contains.__name__ = f"contains_{word}"
    return contains


def format_regex_reward(pattern: str) -> Callable:
    rx = re.compile(pattern, re.DOTALL)

    def format_regex(prompts=None, completions=None, **kw) -> List[float]:
        return [1.0 if rx.fullmatch(_text(c)) else 0.0 for c in completions]

    return format_regex


def char_fraction_reward(chars: str) -> Callable:
    allowed = set(chars)

    def char_fraction(prompts=None, completions=None, **kw) -> List[float]:
        out = []
        for c in completions:
            t = _text(c)
            out.append(sum(ch in allowed for ch in t) / len(t) if t else 0.0)
        return out

    return char_fraction


# name -> factory(argument) for the rule-based rewards; "reward_model" is built by load_reward_model.
REGISTRY: Dict[str, Callable[[Optional[str]], Callable]] = {
    "length": lambda a: length_reward(int(a) if a else 20),
    "contains": lambda a: contains_reward(a),
    "format_regex": lambda a: format_regex_reward(a),
    "char_fraction": lambda a: char_fraction_reward(a),
}


def load_reward_model(path: str, dtype: Any = None):
    """(model, tokenizer) of a reward model saved by method=reward: full weights, or a peft adapter (merged)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    p = Path(path)
    if not (p.is_dir() and ((p / "config.json").exists() or (p / "adapter_config.json").exists())):
        raise ConfigError(f"method.reward_model={path}: not a model directory; point it at the final/ directory "
                          "of a method=reward run")
    kwargs = {"num_labels": 1}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if (p / "adapter_config.json").exists():
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(str(p), **kwargs).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(p), **kwargs)
    tok = AutoTokenizer.from_pretrained(str(p))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def build_rewards(specs: List[str], reward_model: Optional[str] = None, dtype: Any = None):
    """(reward_funcs, reward_processing_classes) for trl's GRPOTrainer."""
    funcs: List[Any] = []
    procs: List[Any] = []
    for spec in specs:
        name, arg = parse_reward_spec(str(spec))
        proc = None
        if name in REGISTRY:
            f: Any = REGISTRY[name](arg)
        else:
            if not reward_model:
                raise ConfigError("method.reward_model=None: the reward_model reward function needs a model "
                                  "trained by method=reward; set method.reward_model=/path/to/run/final")
            f, proc = load_reward_model(reward_model, dtype)
        funcs.append(f)
        procs.append(proc)
    return funcs, procs

