"""training.packing (several samples per sequence, no attention across them, position ids restarting) and the
memory-mapped token file of pretraining (tokenized once, shared by ranks and later runs)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from support.train_helpers import ctx_for, job_config, metrics_rows, torch_threads  # noqa: E402

from hpcft.train.data import IGNORE, PackedSamples, Sample, collate, load_split, pack_indices  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def test_pack_indices_fill_and_cover():
    lengths = [5, 9, 3, 12, 7, 2, 8, 16, 1, 1]
    packs = pack_indices(lengths, 16)
    assert sorted(i for p in packs for i in p) == list(range(len(lengths)))  # every sample once
    assert all(sum(lengths[i] for i in p) <= 16 for p in packs)
    assert len(packs) == -(-sum(lengths) // 16)  # best-fit decreasing: as few packs as the tokens need here
    assert pack_indices(lengths, 16) == packs  # deterministic


@pytest.mark.parametrize("impl,flatten", [("sdpa", False), ("eager", False), ("sdpa", True)])
def test_packed_logits_equal_unpacked(impl, flatten):
    """Every packed sample's logits are its logits alone (fp32): no attention across samples, positions restart;
    the flattened one-row layout (what flash-attention gets) too."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      attn_implementation=impl, use_cache=False)
    model = LlamaForCausalLM(cfg).eval()
    lengths = [5, 9, 3, 12, 7, 2, 8]
    base = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, 100, (n,)).tolist()
        base.append(Sample(i, ids, ids))
    packs = pack_indices(lengths, 16)
    packed = PackedSamples(base, packs)
    batch = collate([packed[j] for j in range(len(packed))], pad_id=0, flatten=flatten)
    assert "attention_mask" not in batch
    if flatten:
        assert batch["input_ids"].shape == (1, sum(lengths))
    labels = batch.pop("labels")
    with torch.no_grad():
        out = model(**batch).logits
        row, off = 0, 0
        for j, pack in enumerate(packs):
            if not flatten:
                row, off = j, 0
            for i in pack:
                n = lengths[i]
                alone = model(input_ids=torch.tensor([base[i].input_ids])).logits[0]
                torch.testing.assert_close(out[row, off:off + n], alone, atol=1e-5, rtol=1e-5)
                # the first token of every packed sample has no label: nothing learns across the boundary
                assert labels[row, off] == IGNORE and labels[row, off + 1:off + n].tolist() == base[i].labels[1:]
                off += n


@pytest.mark.train
def test_packed_and_unpacked_runs_reach_comparable_loss(tmp_path):
    """The same data and epochs, about the same tokens per step: the validation loss ends up alike."""
    from hpcft.train.entry import run

    evals = {}
    for packing, batch in (("false", 8), ("true", 3)):  # 256 samples ~ 100 packs of <= 128 tokens
        out = tmp_path / packing
        cfg = job_config(out, "+experiment=sft_tiny", "training.max_steps=null", "training.epochs=2",
                         f"training.batch_size={batch}", f"training.packing={packing}", "training.keep_checkpoints=off",
                         "training.lr_decay_ratio=1.0")
        run(cfg, ctx_for(out))
        evals[packing] = [r["loss"] for r in metrics_rows(out, "eval") if r["split"] == "validation"]
        data = metrics_rows(out, "data")[0]
        assert (data["samples"] < 120 and data["packed_from"] == 256) if packing == "true" else data["samples"] == 256
    a, b = evals["false"][-1], evals["true"][-1]
    assert evals["true"][-1] < evals["true"][0] - 0.5  # it learns
    assert abs(a - b) / a < 0.15, evals


# ------------------------------------------------------------------------------------------ the token file

def _corpus(tmp_path, n=300):
    p = tmp_path / "corpus.jsonl"
    p.write_text("".join(json.dumps({"text": f"document {i}: " + "abc " * (i % 40)}) + "\n" for i in range(n)))
    return p


def _build(path, cache, q):
    from hpcft.train.tokenizer import byte_tokenizer

    logs = []
    split = load_split(path, "auto", byte_tokenizer(), 64, loss_on_all=True, token_cache=cache, log=logs.append)
    q.put((len(split), [list(map(int, split.samples[i].input_ids)) for i in (0, 7, 299)],
           sum("token file for" in x for x in logs)))


def test_token_file_built_once_by_one_process_and_equal_to_in_memory(tmp_path):
    from hpcft.train.tokenizer import byte_tokenizer

    path, cache = _corpus(tmp_path), tmp_path / "tokens"
    ctx = mp.get_context("spawn")  # two "ranks" at once: one builds under the lock, the other waits and opens it
    q = ctx.Queue()
    procs = [ctx.Process(target=_build, args=(path, cache, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(r[2] for r in results) == [0, 1], results  # exactly one build
    assert results[0][:2] == results[1][:2]
    assert len(list(cache.glob("*.bin"))) == 1 and not list(cache.glob("*.tmp*"))

    tok = byte_tokenizer()
    mem = load_split(path, "auto", tok, 64, loss_on_all=True)  # the in-memory path
    logs = []
    mm = load_split(path, "auto", tok, 64, loss_on_all=True, token_cache=cache, log=logs.append)
    assert not logs  # a later run reuses the file
    assert len(mm) == len(mem) == 300 and mm.truncated == mem.truncated > 0
    for i in (0, 7, 299):
        assert list(map(int, mm.samples[i].input_ids)) == mem.samples[i].input_ids == results[0][1][(0, 7, 299).index(i)]
    os.utime(path, ns=(1, 1))  # changed content stamp (same bytes): found again by content, no rebuild
    load_split(path, "auto", tok, 64, loss_on_all=True, token_cache=cache, log=logs.append)
    assert not logs
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")  # new content: a new file
    mm2 = load_split(path, "auto", tok, 64, loss_on_all=True, token_cache=cache, log=logs.append)
    assert len(mm2) == 301 and len(list(cache.glob("*.bin"))) == 2


@pytest.mark.train
def test_pretraining_from_the_token_file_packed(tmp_path, monkeypatch):
    from hpcft.train.entry import run

    out = tmp_path / "run"
    cache = tmp_path / "tokens"
    cfg = job_config(out, "+experiment=pretrain_tiny", "training.max_steps=12", "training.packing=true",
                     "training.keep_checkpoints=off", f"data.token_cache_dir={cache}")
    summary = run(cfg, ctx_for(out))
    assert summary["final_step"] == 12 and len(list(cache.glob("*.bin"))) == 3  # train, validation, test
    losses = [r["loss"] for r in metrics_rows(out, "train")]
    assert losses[-1] < losses[0]
    assert metrics_rows(out, "data")[0]["packed_from"] > metrics_rows(out, "data")[0]["samples"]
