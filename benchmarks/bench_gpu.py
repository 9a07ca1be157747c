"""GPU benchmark of hpcft's trainer core: LoRA, QLoRA and full fine-tuning (DeepSpeed ZeRO-2) of a ~0.5B-parameter
random-init Llama built from a config (nothing downloaded), through the same entry point jobs use
(`python -m hpcft.train.entry`). Prints one table: steady-state tokens/s (non-padding tokens), MFU, peak GPU
memory, QLoRA memory as a ratio of LoRA's. Then the time-limit warning on the GPU: SIGUSR1 mid-run -> checkpoint +
exit 75 -> the rerun continues with no step trained twice.

Run it with `bash benchmarks/gpu.sh` on a machine with an NVIDIA GPU (about 3-5 minutes on an H100/H200).
`--smoke` runs the same code with a tiny model on CPU (the test suite and a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

from run_config import write_config  # benchmarks/run_config.py

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16, SXM

BIG = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
       "num_key_value_heads": 4, "vocab_size": 50000, "max_position_embeddings": 2048}
SMOKE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 1000, "max_position_embeddings": 512}


def make_data(path: Path, n: int, response_chars: int) -> Path:
    rnd = random.Random(0)
    words = "the a of model data train token layer batch step loss rank node slurm queue memory".split()
    with open(path, "w") as f:
        for i in range(n):
            resp = " ".join(rnd.choice(words) for _ in range(response_chars // 5))[:response_chars]
            f.write(json.dumps({"prompt": f"Question {i}: say something long.", "response": resp}) + "\n")
    return path


def run_entry(cfg_path: Path, timeout: int = 900, signal_after: float | None = None) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(cfg_path.parent / "run.log", "a")
    p = subprocess.Popen([sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg_path)], cwd=ROOT, env=env,
                         stdout=log, stderr=subprocess.STDOUT)
    if signal_after is not None:
        deadline = time.time() + signal_after
        while p.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        if p.poll() is None:
            p.send_signal(signal.SIGUSR1)
    return p.wait(timeout=timeout)


def read_train(out: Path) -> list:
    sys.path.insert(0, str(ROOT))
    from hpcft.rundir.metrics_io import read_metrics

    return read_metrics(out, "train")


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU (a quick check of this script)")
    ap.add_argument("--work", default="/tmp/hpcft-bench-gpu")
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    arch = SMOKE if a.smoke else BIG
    seq, bs = (64, 4) if a.smoke else (1024, 8)
    data = make_data(work / "train.jsonl", 64 if a.smoke else 512, 300 if a.smoke else 4000)
    common = ["model=tiny", "data=custom", f"data.train={data}", "data.format=prompt_response",
              f"training.sequence_length={seq}", f"training.batch_size={bs}", f"training.max_steps={a.steps}",
              "training.learning_rate=1e-4", "training.save_strategy=steps", "training.save_interval=100000",
              "training.keep_checkpoints=2", "resources=local"]
    common += [f"+model.arch.{k}={v}" if k == "vocab_size" else f"model.arch.{k}={v}" for k, v in arch.items()]
    gpu = not a.smoke
    prec = ["training.precision=bf16"] if gpu else []
    cases = {
        "lora": ["method=lora", "method.lora.rank=16", *prec],
        "qlora": ["method=qlora", "method.lora.rank=16", "method.quantization.compute_dtype=bfloat16", *prec]
        if gpu else ["method=qlora", "method.lora.rank=16"],
        "full_zero2": ["method=full", "deepspeed=zero2", *prec],
    }
    name = gpu_name()
    rows = []
    for case, ov in cases.items():
        out = work / case
        t0 = time.time()
        rc = run_entry(write_config(out, common + ov))
        wall = time.time() - t0
        if rc != 0:
            print(f"{case}: FAILED (exit {rc}); log: {out / 'run.log'}", flush=True)
            print((out / "run.log").read_text()[-3000:], flush=True)
            rows.append({"case": case, "failed": rc})
            continue
        s = json.loads((out / "summary.json").read_text())
        tr = read_train(out)
        steady = [r["tokens_per_s"] for r in tr[len(tr) // 3:]]  # skip warm-up
        tps = statistics.median(steady)
        n_total, n_train = s["total_params"], s["trainable_params"]
        flops_per_tok = (6 if case.startswith("full") else 4) * n_total  # frozen weights: no weight gradients
        pk = peak_tflops(name)
        rows.append({"case": case, "params_M": round(n_total / 1e6, 1), "trainable_M": round(n_train / 1e6, 2),
                     "tokens_per_s": round(tps), "mfu": round(flops_per_tok * tps / (pk * 1e12), 3) if pk else None,
                     "peak_mem_GiB": round(max(r["peak_mem_mb"] for r in tr) / 1024, 2), "wall_s": round(wall, 1),
                     "final_loss": round(s["final_train_loss"], 4)})
        print(json.dumps(rows[-1]), flush=True)
    by = {r["case"]: r for r in rows if "failed" not in r}
    if "lora" in by and "qlora" in by:
        print(f"QLoRA peak memory / LoRA peak memory: {by['qlora']['peak_mem_GiB'] / by['lora']['peak_mem_GiB']:.2f}")

    # the time-limit warning on this device: SIGUSR1 mid-run -> checkpoint + 75 -> rerun continues, no step twice
    out = work / "warning"
    steps = a.steps * 4
    cfg = write_config(out, common + cases["lora"] + [f"training.max_steps={steps}"])
    os.environ["HPCFT_TEST_STEP_DELAY_S"] = "0.05"
    rc1 = run_entry(cfg, signal_after=25 if gpu else 12)
    os.environ.pop("HPCFT_TEST_STEP_DELAY_S")
    rc2 = run_entry(cfg)
    got = [r["step"] for r in read_train(out)]
    ok = rc1 == 75 and rc2 == 0 and got == list(range(1, steps + 1))
    print(f"warning: first run exit {rc1} (75 = saved at the warning), rerun exit {rc2}, "
          f"steps {'each trained once' if got == list(range(1, steps + 1)) else 'REPEATED OR LOST'}: "
          f"{'ok' if ok else 'FAILED'}")

    print(f"\n## GPU benchmark ({name}, {time.strftime('%Y-%m-%d')}, seq {seq}, batch {bs}, {a.steps} steps)\n")
    print("| case | params (M) | trainable (M) | tokens/s | MFU | peak GPU mem (GiB) | wall (s) | final loss |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['case']} | failed (exit {r['failed']}) | | | | | | |")
        else:
            print(f"| {r['case']} | {r['params_M']} | {r['trainable_M']} | {r['tokens_per_s']:,} | {r['mfu']} | "
                  f"{r['peak_mem_GiB']} | {r['wall_s']} | {r['final_loss']} |")
    return 0 if ok and all("failed" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
