"""GPU benchmark at scale (issue 23): an 8B-shaped Llama (Llama-3-8B's config: hidden 4096, 32 layers, 32 heads / 8
KV heads, intermediate 14336, vocabulary 128,256) built locally with random weights in bf16 (nothing downloaded),
and a 1B-shaped one (Llama-3.2-1B's config) for full fine-tuning.

    LoRA r16 at sequence 2048 with packing,  training.kernels=none and =liger
    QLoRA (NF4, bf16 compute) the same,       training.kernels=none and =liger
    full fine-tuning of the 1B shape under DeepSpeed ZeRO-2 and ZeRO-3 (sequence 2048, packing)
    a bare transformers+peft loop (LoRA r16, fused AdamW, bf16 autocast, full 2048-token rows) on the 8B shape

Each hpcft case runs as a job runs it (`python -m hpcft.train.entry --config`). Reported: steady tokens/s (real
tokens, median of the last two thirds of the steps), MFU (4N FLOPs per token with a frozen base, 6N for full
fine-tuning, attention not counted, against the card's dense bf16 peak), peak GPU memory
(torch.cuda.max_memory_allocated), hpcft's memory estimate for the same config (`hpcft.config.memory`) beside it,
hpcft's tokens/s over the bare loop's, QLoRA's peak over LoRA's, and the largest per-step loss difference between
kernels=liger and kernels=none (same seed, data and order; LoRA dropout 0 so that nothing random differs).

    bash benchmarks/gpu.sh                      # this benchmark on one GPU (< 10 minutes on an H100/H200)
    python benchmarks/bench_gpu8b.py --smoke    # tiny shapes on the CPU: the same code; the liger cases are
                                                # refused in one line there (no GPU), which the smoke run shows
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run_config import write_config  # benchmarks/run_config.py

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM
LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
             "tie_word_embeddings": False}
LLAMA32_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
              "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0,
              "tie_word_embeddings": True}
SMOKE = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512, "tie_word_embeddings": False}
LORA = {"rank": 16, "alpha": 32, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def sizes(smoke: bool) -> dict:
    if smoke:
        return {"big": SMOKE, "small": {**SMOKE, "tie_word_embeddings": True}, "seq": 128, "batch": 2, "steps": 6,
                "records": 96}
    # batch 2 x 2048: LoRA's estimate ~41 GiB, QLoRA's ~38 GiB without Liger (batch 4: ~67 GiB, too close to an
    # H100's 80 GB for a first run)
    return {"big": LLAMA3_8B, "small": LLAMA32_1B, "seq": 2048, "batch": 2, "steps": 30, "records": 2000}


# ------------------------------------------------------------------------------------------------ inputs

def build_main(spec: dict) -> None:
    """A random-init Llama of `arch` in bf16, built on the GPU when there is one (initialising 8B parameters on
    the CPU takes minutes), saved as a Hugging Face directory with hpcft's byte tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from hpcft.train.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    cfg = LlamaConfig(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      **spec["arch"])
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    d = Path(spec["dir"])
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(d)


def model_dir(work: Path, name: str, arch: dict) -> Path:
    d = work / name
    if not (d / "config.json").exists():
        t0 = time.time()
        rc = subprocess.run([sys.executable, __file__, "--build", json.dumps({"arch": arch, "dir": str(d)})],
                            cwd=ROOT).returncode
        if rc != 0:
            raise SystemExit(f"building {name} failed (exit {rc})")
        print(f"built {name} in {time.time() - t0:.0f} s", flush=True)
    return d


def make_data(path: Path, n: int, seq: int) -> Path:
    """prompt/response records of 1/8 to 3/4 of the sequence (bytes = tokens with the byte tokenizer): packing
    puts several in each row."""
    rnd = random.Random(0)
    words = "the a of model data train token layer batch step loss rank node slurm queue memory".split()
    with open(path, "w") as f:
        for i in range(n):
            n_chars = rnd.randint(seq // 8, 3 * seq // 4)
            resp = " ".join(rnd.choice(words) for _ in range(n_chars // 4))[:n_chars]
            f.write(json.dumps({"prompt": f"Question {i}: say something long.", "response": resp}) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ hpcft cases

def cases(gpu: bool, gc: bool = False) -> dict:
    prec = ["training.precision=bf16", "model.dtype=bfloat16"] if gpu else ["training.precision=fp32"]
    prec += ["training.gradient_checkpointing=true"] if gc else []
    lora = ["method.lora.rank=16", "method.lora.alpha=32", "method.lora.dropout=0.0"]
    qdt = "bfloat16" if gpu else "float32"
    out = {}
    for k in ("none", "liger"):
        out[f"lora_{k}"] = ("big", ["method=lora", *lora, *prec, f"training.kernels={k}"])
        out[f"qlora_{k}"] = ("big", ["method=qlora", *lora, f"method.quantization.compute_dtype={qdt}", *prec,
                                     f"training.kernels={k}"])
    for st in (2, 3):
        out[f"full_zero{st}_1b"] = ("small", ["method=full", f"deepspeed=zero{st}", *prec, "training.kernels=none"])
    return out


def run_case(work: Path, case: str, model: Path, ov: list, common: list, timeout: int) -> dict:
    out = work / case
    try:
        cfg_path = write_config(out, common + [f"model.path={model}", f"model.tokenizer={model}"] + ov)
    except Exception as e:  # noqa: BLE001 - a refused config (e.g. kernels=liger without a GPU): one line
        return {"case": case, "refused": str(e).splitlines()[0]}
    est = estimate_gib(cfg_path)
    t0 = time.time()
    with open(out / "run.log", "w") as log:
        try:
            rc = subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg_path)], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.time() - t0
    if rc != 0:
        tail = (out / "run.log").read_text()[-1500:]
        return {"case": case, "failed": rc, "log": str(out / "run.log"), "tail": tail}
    s = json.loads((out / "summary.json").read_text())
    tr = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    tr = [r for r in tr if r.get("type") == "train"]
    return {"case": case, "params": s["total_params"], "trainable": s["trainable_params"],
            "tps": statistics.median(r["tokens_per_s"] for r in tr[len(tr) // 3:]),
            "peak_gib": max(r["peak_mem_mb"] for r in tr) / 1024, "estimate_gib": est, "wall": wall,
            "losses": [r["loss"] for r in tr], "full": case.startswith("full")}


def estimate_gib(cfg_path: Path):
    sys.path.insert(0, str(ROOT))
    from hpcft.config import memory as M
    from hpcft.config.compose import from_yaml_file

    est, _ = M.estimate_cfg(from_yaml_file(cfg_path))
    return est.total / 2**30 if est is not None else None


# ------------------------------------------------------------------------------------------------ bare loop

def bare_main(spec: dict) -> None:
    """transformers + peft, what a user writes: LoRA r16 on q/k/v/o, bf16 weights and autocast, fused AdamW, clip
    1.0, full rows of `seq` random tokens (no padding), the model's own loss; a sync per step for the timing."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype, attn_implementation="sdpa").to(dev)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0,
                                             target_modules=LORA["targets"], task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    log = []
    for _ in range(spec["steps"]):
        ids = torch.randint(4, 260, (spec["batch"], spec["seq"]), generator=g).to(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        lv = float(loss)  # the sync
        log.append({"tps": ids.numel() / (time.perf_counter() - t0), "loss": lv})
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    n = sum(p.numel() for p in model.parameters())
    Path(spec["out"]).write_text(json.dumps({"log": log, "peak_gib": peak, "params": n}))


def run_bare(work: Path, model: Path, sz: dict, timeout: int) -> dict:
    out = work / "bare.json"
    spec = {"model": str(model), "seq": sz["seq"], "batch": sz["batch"], "steps": sz["steps"], "out": str(out)}
    t0 = time.time()
    with open(work / "bare.log", "w") as log:
        try:
            rc = subprocess.run([sys.executable, __file__, "--bare", json.dumps(spec)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    if rc != 0:
        return {"case": "bare_lora", "failed": rc, "log": str(work / "bare.log")}
    r = json.loads(out.read_text())
    tps = [x["tps"] for x in r["log"]]
    return {"case": "bare_lora", "params": r["params"], "trainable": None, "tps": statistics.median(tps[len(tps) // 3:]),
            "peak_gib": r["peak_gib"], "estimate_gib": None, "wall": time.time() - t0,
            "losses": [x["loss"] for x in r["log"]], "full": False}


# ------------------------------------------------------------------------------------------------ report

def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def table(rows: list, name: str, sz: dict) -> None:
    pk = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    bare = next((r for r in rows if r["case"] == "bare_lora" and "tps" in r), None)
    print(f"\n## 8B-shaped GPU benchmark ({name}, {time.strftime('%Y-%m-%d')}, seq {sz['seq']}, batch {sz['batch']}, "
          f"{sz['steps']} steps, packing)\n")
    print("| case | params (M) | tokens/s | vs bare | MFU | peak mem (GiB) | estimate (GiB) | est / peak | wall (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "tps" not in r:
            why = r.get("refused") or f"failed ({r.get('failed')}): {r.get('log')}"
            print(f"| {r['case']} | {why} | | | | | | | |")
            continue
        mfu = (6 if r["full"] else 4) * r["params"] * r["tps"] / (pk * 1e12) if pk else None
        vs = f"{r['tps'] / bare['tps']:.2f}" if bare and r["case"].startswith("lora") else "-"
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        est = f"{r['estimate_gib']:.2f}" if r["estimate_gib"] is not None else "-"
        ratio = f"{r['estimate_gib'] / r['peak_gib']:.2f}" if r["estimate_gib"] and r["peak_gib"] else "-"
        print(f"| {r['case']} | {r['params'] / 1e6:,.{0 if r['params'] >= 1e8 else 2}f} | {r['tps']:,.0f} | {vs} | "
              f"{f'{mfu:.3f}' if mfu is not None else '-'} | {peak} | {est} | {ratio} | {r['wall']:.0f} |")
    by = {r["case"]: r for r in rows if "tps" in r}
    for q, lo in (("qlora_none", "lora_none"), ("qlora_liger", "lora_liger")):
        if q in by and lo in by and by[lo]["peak_gib"]:
            print(f"{q} peak / {lo} peak: {by[q]['peak_gib'] / by[lo]['peak_gib']:.2f}")
    for m in ("lora", "qlora"):
        a, b = by.get(f"{m}_none"), by.get(f"{m}_liger")
        if a and b:
            d = max(abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=False))
            print(f"{m}: largest per-step loss difference liger vs none over {len(a['losses'])} steps: {d:.2e}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (a check of this script)")
    ap.add_argument("--work", default="/tmp/hpcft-bench-gpu8b")
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing in every hpcft case (activations "
                    "no longer dominate: what QLoRA's memory saving needs to show)")
    ap.add_argument("--cases", default="", help="comma-separated subset of the cases (default all + bare)")
    ap.add_argument("--build", help=argparse.SUPPRESS)
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.build:
        build_main(json.loads(a.build))
        return 0
    if a.bare:
        bare_main(json.loads(a.bare))
        return 0
    t_all = time.time()
    sz = sizes(a.smoke)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    gpu = not a.smoke
    models = {"big": model_dir(work, "model-8b" if gpu else "model-smoke", sz["big"]),
              "small": model_dir(work, "model-1b" if gpu else "model-smoke-small", sz["small"])}
    data = make_data(work / "train.jsonl", sz["records"], sz["seq"])
    common = ["model=tiny", "model.source=pretrained", "data=custom", f"data.train={data}",
              "data.format=prompt_response", f"training.sequence_length={sz['seq']}", "training.packing=true",
              f"training.batch_size={sz['batch']}", f"training.max_steps={sz['steps']}", "training.learning_rate=1e-4",
              "training.warmup_ratio=0", "training.save_strategy=steps", "training.save_interval=100000",
              "training.keep_checkpoints=off", "training.monitor_interval=0", "resources=local"]
    common += ["resources.gpus_per_node=1"] if gpu else []
    want = set(a.cases.split(",")) if a.cases else None
    rows = []
    limit = 150 if gpu else 600
    for case, (size, ov) in cases(gpu, a.gc).items():
        if want is None or case in want:
            rows.append(run_case(work, case, models[size], ov, common, limit))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
    if want is None or "bare_lora" in want:
        rows.append(run_bare(work, models["big"], sz, limit))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "losses"}), flush=True)
    table(rows, gpu_name(), sz)
    print(f"\nwhole script: {time.time() - t_all:.0f} s")
    expected_refusals = {r["case"] for r in rows if "refused" in r} <= ({"lora_liger", "qlora_liger"} if a.smoke else set())
    return 0 if expected_refusals and all("failed" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
