"""Regenerate the tiny datasets of the preference / RL / text-to-image methods (deterministic):

    python -m hpcft.assets.make_method_data

- tiny_pref:    {"prompt","chosen","rejected"}: chosen answers are right and calm, rejected ones wrong and shouted.
- tiny_prompts: {"prompt"} for GRPO.
- tiny_images:  32x32 PNGs (solid colours and simple shapes) in images/ + {"image","caption"} JSONL per split.
"""

import random
from pathlib import Path

from hpcft.assets.make_tiny_data import write

HERE = Path(__file__).parent / "data"
ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow", "ant", "elk", "yak", "emu", "bat", "eel"]
COLORS = ["red", "blue", "green", "gold", "grey", "pink", "teal", "plum"]
RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "gold": (230, 190, 40),
       "grey": (128, 128, 128), "pink": (240, 140, 180), "teal": (20, 150, 150), "plum": (130, 50, 120)}
SHAPES = ["square", "circle", "stripes", "plain"]


def pref_records(rng: random.Random, n: int):
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(10), rng.randrange(10)
            wrong = a + b + rng.choice([-3, -2, -1, 1, 2, 3])
            yield {"prompt": f"What is {a} plus {b}?", "chosen": f"{a} plus {b} is {a + b}.",
                   "rejected": f"NO IDEA!!! MAYBE {wrong}???"}
        elif kind == 1:
            w = rng.choice(ANIMALS)
            yield {"prompt": f"Spell {w} backwards.", "chosen": f"{w} backwards is {w[::-1]}.",
                   "rejected": f"{w.upper()}!!! WHO CARES???"}
        else:
            c, w = rng.choice(COLORS), rng.choice(ANIMALS)
            yield {"prompt": f"Describe a {c} {w}.", "chosen": f"The {w} is {c}. A {c} {w} is rare.",
                   "rejected": "BORING!!! ASK SOMETHING ELSE???"}


def prompt_records(rng: random.Random, n: int):
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            yield {"prompt": f"What is {rng.randrange(10)} plus {rng.randrange(10)}?"}
        elif kind == 1:
            yield {"prompt": f"Spell {rng.choice(ANIMALS)} backwards."}
        else:
            yield {"prompt": f"Describe a {rng.choice(COLORS)} {rng.choice(ANIMALS)}."}


def draw(color: str, shape: str, size: int = 32):
    from PIL import Image, ImageDraw

    bg = (245, 245, 245)
    fg = RGB[color]
    img = Image.new("RGB", (size, size), fg if shape == "plain" else bg)
    d = ImageDraw.Draw(img)
    if shape == "square":
        d.rectangle([8, 8, 23, 23], fill=fg)
    elif shape == "circle":
        d.ellipse([6, 6, 25, 25], fill=fg)
    elif shape == "stripes":
        for x in range(0, size, 8):
            d.rectangle([x, 0, x + 3, size - 1], fill=fg)
    return img


def caption(color: str, shape: str) -> str:
    if shape == "plain":
        return f"a plain {color} image"
    if shape == "stripes":
        return f"{color} stripes on a white background"
    return f"a {color} {shape} on a white background"


def make_images() -> None:
    out = HERE / "tiny_images"
    pairs = [(c, s) for c in COLORS for s in SHAPES]  # 32 images
    rng = random.Random(1234)
    rng.shuffle(pairs)
    (out / "images").mkdir(parents=True, exist_ok=True)
    recs = []
    for c, s in pairs:
        name = f"images/{c}_{s}.png"
        draw(c, s).save(out / name, optimize=True)
        recs.append({"image": name, "caption": caption(c, s)})
    write(out / "train.jsonl", recs[:24])
    write(out / "validation.jsonl", recs[24:28])
    write(out / "test.jsonl", recs[28:])


def main() -> None:
    for name, gen, sizes in [("tiny_pref", pref_records, [("train", 256), ("validation", 32), ("test", 32)]),
                             ("tiny_prompts", prompt_records, [("train", 128), ("validation", 16), ("test", 16)])]:
        rng = random.Random(1234)
        for split, n in sizes:
            write(HERE / name / f"{split}.jsonl", gen(rng, n))
    make_images()


if __name__ == "__main__":
    main()
