"""Regenerate the tiny shipped datasets (deterministic): python -m hpcft.assets.make_tiny_data

They are small and learnable on purpose: a tiny model's loss visibly falls within a few dozen CPU steps.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent / "data"
ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow", "ant", "elk", "yak", "emu", "bat", "eel"]
COLORS = ["red", "blue", "green", "gold", "grey", "pink", "teal", "plum"]


def sft_records(rng: random.Random, n: int):
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(10), rng.randrange(10)
            yield {"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."}
        elif kind == 1:
            w = rng.choice(ANIMALS)
            yield {"prompt": f"Spell {w} backwards.", "response": f"{w} backwards is {w[::-1]}."}
        else:
            c, w = rng.choice(COLORS), rng.choice(ANIMALS)
            yield {"prompt": f"Describe a {c} {w}.", "response": f"The {w} is {c}. A {c} {w} is rare."}


def text_records(rng: random.Random, n: int):
    for _ in range(n):
        c, w, v = rng.choice(COLORS), rng.choice(ANIMALS), rng.choice(["runs", "sleeps", "sings", "eats"])
        yield {"text": f"The {c} {w} {v} all day. Every {w} likes the colour {c}."}


def write(path: Path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def main() -> None:
    for name, gen in [("tiny_sft", sft_records), ("tiny_text", text_records)]:
        rng = random.Random(1234)
        for split, n in [("train", 256), ("validation", 32), ("test", 32)]:
            write(HERE / name / f"{split}.jsonl", gen(rng, n))


if __name__ == "__main__":
    main()
