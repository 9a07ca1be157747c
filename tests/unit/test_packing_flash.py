"""Packing on a GPU: flash-attention's variable-length layout (one row, no padding, position ids restarting per
sample: DataCollatorWithFlattening's semantics), chosen only where CUDA and flash-attn are both present; batches
reach a GPU through pinned memory. What runs on the CPU: the collator's output and the choices."""

import importlib.util
import types

import pytest

from hpcft.train import data as D
from hpcft.train.data import IGNORE, PackedSamples, Sample, collate, pack_indices


def packed_batch(lengths, capacity):
    base = [Sample(i, [100 + 10 * i + k for k in range(n)], [100 + 10 * i + k for k in range(n)])
            for i, n in enumerate(lengths)]
    packs = pack_indices(lengths, capacity)
    ps = PackedSamples(base, packs)
    return base, packs, [ps[j] for j in range(len(ps))]


def test_the_flattened_batch_has_no_padding_and_restarts_positions_per_sample():
    lengths = [5, 9, 3, 12, 7, 2, 8]
    base, packs, rows = packed_batch(lengths, 16)
    b = collate(rows, pad_id=0, flatten=True)
    assert set(b) == {"input_ids", "position_ids", "labels"}  # no attention_mask: the bounds are in position_ids
    assert b["input_ids"].shape == b["position_ids"].shape == b["labels"].shape == (1, sum(lengths))  # no padding
    order = [i for p in packs for i in p]
    assert b["input_ids"][0].tolist() == [t for i in order for t in base[i].input_ids]
    assert b["position_ids"][0].tolist() == [k for i in order for k in range(lengths[i])]  # restart per sample
    starts = [sum(lengths[j] for j in order[:m]) for m in range(len(order))]
    labels = b["labels"][0].tolist()
    assert [labels[s] for s in starts] == [IGNORE] * len(order)  # no sample learns from the one before it
    assert sum(x != IGNORE for x in labels) == sum(lengths) - len(order)


def test_unflattened_packs_pad_to_the_longest_and_keep_positions_counting_in_the_padding():
    lengths = [5, 9, 3, 12, 7, 2, 8]
    _, packs, rows = packed_batch(lengths, 16)
    b = collate(rows, pad_id=0)
    width = max(sum(lengths[i] for i in p) for p in packs)
    assert b["input_ids"].shape == (len(packs), width)
    for r, p in enumerate(packs):
        n = sum(lengths[i] for i in p)
        assert b["labels"][r, n:].eq(IGNORE).all() and b["position_ids"][r, n:].tolist() == list(range(width - n))


@pytest.mark.parametrize("packing,impl,want", [(True, "flash_attention_2", True), (True, "flash_attention_3", True),
                                               (True, "sdpa", False), (True, "flex_attention", False),
                                               (False, "flash_attention_2", False)])
def test_only_flash_attention_gets_the_flattened_layout(packing, impl, want):
    assert D.flattens(packing, impl) is want


@pytest.mark.parametrize("cuda,flash,want", [(True, True, "flash_attention_2"), (True, False, "sdpa"),
                                             (False, True, "sdpa")])
def test_flash_attention_is_chosen_only_with_cuda_and_flash_attn(monkeypatch, cuda, flash, want):
    import torch

    from hpcft.train.modeling import attn_implementation

    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (object() if flash else None) if name == "flash_attn" else real(name, *a))
    model = {"dtype": "bfloat16", "attn_implementation": None}
    assert attn_implementation(model, "bf16") == want
    assert attn_implementation(model, "fp32") == "sdpa"  # flash-attention takes no fp32


def test_batches_stay_where_they_are_on_the_cpu_and_go_pinned_to_a_gpu(monkeypatch):
    import torch

    from hpcft.train.engine import Engine

    e = Engine.__new__(Engine)
    t = torch.arange(6).reshape(2, 3)
    e.device = torch.device("cpu")
    assert e.to_device(t) is t  # no copy on the CPU
    calls = []

    class Pinned:
        def to(self, device, non_blocking=False):
            calls.append((str(device), non_blocking))
            return "on-gpu"

    fake = types.SimpleNamespace(pin_memory=lambda: Pinned())
    e.device = torch.device("cuda", 0)
    assert e.to_device(fake) == "on-gpu" and calls == [("cuda:0", True)]
