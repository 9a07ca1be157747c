"""Feeding the trainer: tokens/s with and without `training.packing` on a short-sample SFT set, and peak memory per
rank when pretraining on a corpus larger than the shipped tiny one, tokens in memory (`data.memmap=false`) against the
memory-mapped token file (`data.memmap=true`), side by side in one run.

    .venv/bin/python benchmarks/bench_data.py [--steps 12] [--repeats 2] [--threads 1] [--sizes 10,200]

Every run is `python -m hpcft.train.entry --config RUN/config.yaml` (what a job runs); the memory runs are two ranks
under `torchrun --nproc_per_node 2` (gloo), as a two-process job runs. Runs alternate (A B A B ...) so that the load
of the machine hits all of them alike.

Packing: a random-init Llama (hidden 192, 4 layers, byte tokenizer) on 4,000 prompt/response records of 20-120 tokens,
sequence 256; unpacked batch 8 (padded to the longest sample of the batch), unpacked batch 24 (about as many samples
per step as the packs hold), packed batch 8. Reported: real (non-padding) tokens/s and samples/s, median over the last
two thirds of the steps, median over repeats; the share of padding in the computed batch; final loss.

Memory: the tiny Llama (model=tiny) pretraining on tiny_text's 256 documents repeated N times (each copy numbered,
so no two documents are the same); sequence 128, batch 8, 5 steps, two ranks. Each rank's peak resident set (RSS)
and peak unique set (USS: memory no other process shares; pages of the token file are shared through the page cache)
are sampled every 50 ms with psutil; the memory-mapped runs once with a cold token cache (tokenizing included) and once
warm (a later run reusing the file). Start-up = process start to the first training step.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from run_config import write_config  # benchmarks/run_config.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ARCH = {"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "num_key_value_heads": 4, "max_position_embeddings": 512, "tie_word_embeddings": False}
SEQ, N_SFT = 256, 4000


def make_model(d: Path) -> Path:
    if (d / "config.json").exists():
        return d
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hpcft.train.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **ARCH))
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(d)
    return d


def make_sft(path: Path) -> Path:
    rnd = random.Random(0)
    words = "the a of model data train token layer batch step loss rank node queue memory gradient".split()
    with open(path, "w") as f:
        for i in range(N_SFT):
            p = " ".join(rnd.choice(words) for _ in range(rnd.randint(2, 8)))
            r = " ".join(rnd.choice(words) for _ in range(rnd.randint(2, 16)))
            f.write(json.dumps({"prompt": f"{i}: {p}?", "response": r}) + "\n")
    return path


def make_corpus(path: Path, times: int) -> tuple[Path, int]:
    src = (ROOT / "hpcft/assets/data/tiny_text/train.jsonl").read_text().splitlines()
    n = 0
    with open(path, "w") as f:
        for k in range(times):
            for line in src:
                f.write(json.dumps({"text": f"({k}) " + json.loads(line)["text"]}) + "\n")
                n += 1
    return path, n


def train_rows(out: Path, kind: str = "train") -> list:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("type") == kind]


def steady(xs: list) -> float:
    return statistics.median(xs[len(xs) // 3:])


# --------------------------------------------------------------------------------------------------- packing

def packing_run(work: Path, model: Path, data: Path, tag: str, batch: int, packing: bool, steps: int, env) -> dict:
    import shutil

    out = work / f"pack-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = write_config(out, [
        "model=tiny", "model.source=pretrained", f"model.path={model}", f"model.tokenizer={model}", "method=full",
        "data=custom", f"data.train={data}", "data.format=prompt_response", "resources=local",
        f"training.sequence_length={SEQ}", f"training.batch_size={batch}", f"training.max_steps={steps}",
        f"training.packing={str(packing).lower()}", "training.learning_rate=1e-3", "training.lr_decay_ratio=1",
        "training.keep_checkpoints=off", "training.save_strategy=steps", "training.save_interval=100000"])
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg)], env=env, cwd=ROOT,
                       capture_output=True, text=True)
    if p.returncode != 0:
        return {"failed": p.returncode, "log": p.stderr[-2000:]}
    tr = train_rows(out)
    data_row = train_rows(out, "data")[0]
    per_step_tokens = [r["tokens_per_s"] for r in tr]
    samples_per_seq = data_row.get("packed_from", data_row["samples"]) / data_row["samples"]
    # the batch as computed: packed rows are full sequences (less a little), unpacked rows pad to the longest
    computed = batch * SEQ if packing else None
    return {"tps": steady(per_step_tokens), "sps": steady(per_step_tokens) / (tokens_per_sample(data) or 1),
            "samples_per_seq": samples_per_seq, "loss": tr[-1]["loss"], "wall": time.perf_counter() - t0,
            "computed": computed}


_TPS: dict = {}


def tokens_per_sample(data: Path) -> float:
    """Mean tokens of one sample of the SFT set (as the trainer tokenizes it)."""
    if data not in _TPS:
        from hpcft.train.data import load_split
        from hpcft.train.tokenizer import byte_tokenizer

        sp = load_split(data, "prompt_response", byte_tokenizer(), SEQ, template="none")
        _TPS[data] = statistics.mean(len(s.input_ids) for s in sp.samples)
        lengths = sorted(len(s.input_ids) for s in sp.samples)
        _TPS["range"] = (lengths[0], lengths[len(lengths) // 2], lengths[-1])
    return _TPS[data]


def padding_share(data: Path, batch: int, seed: int = 42) -> float:
    """The share of padding in the unpacked batches of one epoch (rows padded to the batch's longest)."""
    from hpcft.train.data import epoch_order, load_split
    from hpcft.train.tokenizer import byte_tokenizer

    lens = [len(s.input_ids) for s in load_split(data, "prompt_response", byte_tokenizer(), SEQ).samples]
    order = epoch_order(len(lens), seed, 0)
    real = padded = 0
    for i in range(0, len(order) - batch + 1, batch):
        b = [lens[j] for j in order[i:i + batch]]
        real += sum(b)
        padded += max(b) * len(b)
    return 1 - real / padded


# ---------------------------------------------------------------------------------------------------- memory

def watch(proc: subprocess.Popen, stop: threading.Event, peaks: dict) -> None:
    """Sample every rank (the torchrun children running hpcft.train.entry): peak RSS and USS in MiB."""
    import psutil

    parent = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            for c in parent.children(recursive=True):
                try:
                    if "hpcft.train.entry" not in " ".join(c.cmdline()):
                        continue
                    m = c.memory_full_info()
                    p = peaks.setdefault(c.pid, {"rss": 0.0, "uss": 0.0})
                    p["rss"] = max(p["rss"], m.rss / 2**20)
                    p["uss"] = max(p["uss"], m.uss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            return
        stop.wait(0.05)


def memory_run(work: Path, corpus: Path, tag: str, memmap: bool, cache: Path, env) -> dict:
    import shutil

    out = work / f"mem-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = write_config(out, [
        "+experiment=pretrain_tiny", f"data.train={corpus}", "data.validation=null", "data.test=null",
        f"data.memmap={str(memmap).lower()}", f"data.token_cache_dir={cache}", "resources.tasks_per_node=2",
        "training.max_steps=5", "training.keep_checkpoints=off", "training.save_strategy=steps",
        "training.save_interval=100000"])
    torchrun = Path(sys.executable).parent / "torchrun"
    t0 = time.time()
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "hpcft.train.entry",
                             "--config", str(cfg)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    stop, peaks = threading.Event(), {}
    th = threading.Thread(target=watch, args=(proc, stop, peaks), daemon=True)
    th.start()
    log, _ = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        return {"failed": proc.returncode, "log": log[-2000:]}
    tr = train_rows(out)
    return {"rss": [round(p["rss"]) for p in peaks.values()], "uss": [round(p["uss"]) for p in peaks.values()],
            "startup": tr[0]["time"] - t0 if tr and "time" in tr[0] else None, "loss": tr[-1]["loss"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/hpcft-bench-data")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sizes", default="10,200", help="corpus sizes as multiples of tiny_text's 256 documents")
    ap.add_argument("--skip", default="", help="packing or memory")
    a = ap.parse_args()
    t_all = time.perf_counter()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HPCFT_HOME=str(work / "home"))
    os.environ["HPCFT_HOME"] = env["HPCFT_HOME"]
    date = time.strftime("%Y-%m-%d")
    if "packing" not in a.skip:
        model, data = make_model(work / "model"), make_sft(work / "sft.jsonl")
        ways = {"unpacked, batch 8": (8, False), "unpacked, batch 24": (24, False), "packed, batch 8": (8, True)}
        res: dict = {w: [] for w in ways}
        for rep in range(a.repeats):
            for w, (batch, packing) in ways.items():
                r = packing_run(work, model, data, f"{batch}-{packing}-{rep}", batch, packing, a.steps, env)
                print(json.dumps({"way": w, "repeat": rep, **r}), flush=True)
                res[w].append(r)
        tokens_per_sample(data)
        lo, mid, hi = _TPS["range"]
        print(f"\n## packing ({date}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={a.threads}, Llama hidden "
              f"{ARCH['hidden_size']} x {ARCH['num_hidden_layers']} layers, {N_SFT} samples of {lo}-{hi} tokens "
              f"(median {mid}), sequence {SEQ}, {a.steps} steps, medians of {a.repeats})\n")
        print("| way | real tokens/s | samples/s | samples per sequence | padding in the batch | final loss | "
              "tokens/s vs unpacked batch 8 |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for w, (batch, packing) in ways.items():
            ok = [r for r in res[w] if "failed" not in r]
            if not ok:
                print(f"| {w} | failed | | | | | |  {res[w][0].get('log', '')[-300:]!r}")
                continue
            tps = statistics.median(r["tps"] for r in ok)
            base = base or tps
            pad = 1 - ok[0]["samples_per_seq"] * tokens_per_sample(data) / SEQ if packing else padding_share(data,
                                                                                                           batch)
            print(f"| {w} | {tps:,.0f} | {statistics.median(r['sps'] for r in ok):,.1f} | "
                  f"{ok[0]['samples_per_seq']:.1f} | {pad:.0%} | {statistics.median(r['loss'] for r in ok):.3f} | "
                  f"{tps / base:.2f} |")
    if "memory" not in a.skip:
        print(f"\n## memory per rank ({date}, 2 ranks under torchrun, gloo, model=tiny, sequence 128, batch 8, "
              "5 steps)\n")
        print("| corpus | tokens | way | peak RSS per rank (MiB) | peak USS per rank (MiB) | start-up to step 1 (s) |")
        print("|---|---|---|---|---|---|")
        for times in [int(x) for x in a.sizes.split(",")]:
            corpus, n_docs = make_corpus(work / f"corpus-x{times}.jsonl", times)
            n_tok = corpus.stat().st_size  # bytes ~ tokens of the byte tokenizer (+2 per document, - JSON syntax)
            cache = work / f"tokens-x{times}"
            import shutil

            shutil.rmtree(cache, ignore_errors=True)
            rows = [("in memory (memmap=false)", False), ("memory-mapped, cold cache", True),
                    ("memory-mapped, warm cache", True)]
            for i, (way, memmap) in enumerate(rows):
                r = memory_run(work, corpus, f"x{times}-{i}", memmap, cache, env)
                print(json.dumps({"corpus": times, "way": way, **r}), file=sys.stderr, flush=True)
                if "failed" in r:
                    print(f"| {times}x tiny_text ({n_docs:,} docs) | ~{n_tok:,} | {way} | failed | | |")
                    continue
                st = f"{r['startup']:.1f}" if r["startup"] is not None else "-"
                print(f"| {times}x tiny_text ({n_docs:,} docs) | ~{n_tok:,} | {way} | "
                      f"{' / '.join(map(str, sorted(r['rss'])))} | {' / '.join(map(str, sorted(r['uss'])))} | {st} |",
                      flush=True)
    print(f"\nwhole script: {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
