"""Will it fit? The memory estimate (hpcft.config.memory) beside the measured peak of real training runs, per method.

Each case is a real run of the trainer a job runs (`hpcft.train.entry.run`, in one child process for all cases, so
the imports are paid once), with data long enough that every sample fills `training.sequence_length` (the estimate
assumes full sequences). What is measured, per case:

- GPU: `torch.cuda.max_memory_allocated()` over the training phase (the peak statistics are reset when the
  trainer starts its loop, after the model is loaded), minus what was allocated before the case began.
- CPU: the process's peak resident set (VmHWM) over the training phase minus its resident set before the model was
  built. The peak is reset (`/proc/self/clear_refs`) when the loop starts, so loading transients (a state dict
  beside the model) do not count, while the model itself does (it was built after the baseline). glibc's dynamic
  mmap threshold is pinned (MALLOC_MMAP_THRESHOLD_=65536) so freed tensors go back to the system instead of
  staying in the heap, and the heap is trimmed before each baseline: the resident set then follows what torch
  holds. All libraries are imported before the first baseline.

    python benchmarks/bench_memory.py                     # every LM method, small model, CPU or the local GPU
    python benchmarks/bench_memory.py --cases lora,qlora  # some
    python benchmarks/bench_memory.py --size gpu          # the ~0.47B model of benchmarks/bench_gpu.py (a GPU)
    python benchmarks/bench_memory.py --json              # one JSON object per case

Prints a table (estimate, measured, estimate / measured) and exits 1 when a ratio is outside --tolerance.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

SIZES = {
    # CPU: big enough that the model, its optimizer states and the logits dominate the resident set's noise
    "small": {"arch": {"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 8,
                       "num_key_value_heads": 4, "vocab_size": 8000, "max_position_embeddings": 1024},
              "seq": 128, "batch": 8, "completion": 32},
    # GPU: the model of benchmarks/bench_gpu.py
    "gpu": {"arch": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                     "num_key_value_heads": 4, "vocab_size": 50000, "max_position_embeddings": 2048},
            "seq": 1024, "batch": 8, "completion": 256},
}

# case -> (overrides, data kind)
CASES = {
    "pretrain": (["method=pretrain"], "text"),
    "full": (["method=full"], "sft"),
    "lora": (["method=lora"], "sft"),
    "lora_gc": (["method=lora", "training.gradient_checkpointing=true"], "sft"),
    "qlora": (["method=qlora"], "sft"),
    "reward": (["method=reward"], "pref"),
    "reward_lora": (["method=reward_lora"], "pref"),
    "dpo": (["method=dpo"], "pref"),
    "dpo_full": (["method=dpo", "method.lora=null"], "pref"),
    "grpo": (["method=grpo", "method.num_generations=4"], "prompt"),
}
DEFAULT_CASES = "pretrain,full,lora,qlora,reward,dpo,grpo"
GPU_CASES = "pretrain,full,lora,lora_gc,qlora,reward,dpo,grpo,full_zero2"  # DeepSpeed last: its process group stays
WORDS = "the a of model data train token layer batch step loss rank node slurm queue memory".split()


def write_data(work: Path, seq: int, completion: int) -> dict:
    """JSONL files whose samples are longer than `seq` tokens (bytes: ~1 token per character)."""
    rnd = random.Random(0)

    def text(chars: int) -> str:
        out = ""
        while len(out) < chars:
            out += rnd.choice(WORDS) + " "
        return out[:chars]

    n, long = 64, seq * 2
    fit = seq - 16 - 12  # prompt + answer within seq (trl's RewardTrainer drops longer pairs)
    files = {}
    for kind, make in (("text", lambda: {"text": text(long)}),
                       ("sft", lambda: {"prompt": text(16), "response": text(long)}),
                       ("pref", lambda: {"prompt": text(16), "chosen": text(fit), "rejected": text(fit)}),
                       ("prompt", lambda: {"prompt": text(seq)})):
        p = work / f"{kind}.jsonl"
        with open(p, "w") as f:
            for _ in range(n):
                f.write(json.dumps(make()) + "\n")
        files[kind] = p
    return files


def case_overrides(case: str, size: dict, data: dict, steps: int, gpu: bool, extra: list = ()) -> list:
    if case == "full_zero2":
        ov, kind = ["method=full", "deepspeed=zero2"], "sft"
    else:
        ov, kind = CASES[case]
    fmt = {"text": "text", "sft": "prompt_response", "pref": "preference", "prompt": "prompt"}[kind]
    common = ["model=tiny", "resources=local", "data=custom", f"data.train={data[kind]}", f"data.format={fmt}",
              f"training.sequence_length={size['seq']}", f"training.batch_size={size['batch']}",
              f"training.max_steps={steps}", "training.keep_checkpoints=off", "training.save_strategy=steps",
              "training.save_interval=100000", "training.learning_rate=1e-4"]
    common += [f"+model.arch.{k}={v}" if k == "vocab_size" else f"model.arch.{k}={v}" for k, v in size["arch"].items()]
    if gpu:
        common += ["resources.gpus_per_node=1", "training.precision=bf16"]
        if not any(str(x).startswith("training.kernels=") for x in extra):  # the peaks measured without Liger
            common += ["training.kernels=none"]
        if case == "qlora":
            common += ["method.quantization.compute_dtype=bfloat16"]
    if case.startswith("grpo"):
        common += [f"method.max_completion_length={size['completion']}"]
    return common + ov + list(extra)


# ------------------------------------------------------------------------------------------------------ child

def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec_path: str) -> int:
    """Run every case of the spec in this process; one JSON line per case on stdout."""
    import ctypes
    import gc

    spec = json.loads(Path(spec_path).read_text())
    libc = ctypes.CDLL("libc.so.6")
    import torch  # noqa: F401  (everything a case may import, before the first baseline)
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from trl import DPOTrainer, GRPOTrainer, RewardTrainer  # noqa: F401

    import trainers._trl_common as trl_common
    import trainers.causal_lm as causal_lm
    from hpcft.config.compose import from_yaml_file
    from hpcft.train.context import RunContext
    from hpcft.train.entry import run

    cuda = torch.cuda.is_available()
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    marks: dict = {}

    def settle() -> None:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        libc.malloc_trim(0)

    def measure_train(cls, name: str) -> None:
        orig = getattr(cls, name)

        def wrapped(self, *a, **k):
            settle()
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            else:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM to the current resident set
            try:
                return orig(self, *a, **k)
            finally:
                if cuda:
                    torch.cuda.synchronize()
                    marks["peak"] = torch.cuda.max_memory_allocated() / MIB
                else:
                    marks["peak"] = _status_mib("VmHWM")
        setattr(cls, name, wrapped)

    measure_train(causal_lm.CausalLMRecipe, "train")
    measure_train(trl_common.TrlRun, "train")
    if spec.get("warmup"):  # a tiny unmeasured run first: one-time allocations of the first run are not a case's
        cfg = from_yaml_file(spec["warmup"])
        run(cfg, RunContext(output_dir=Path(cfg.output_dir)))
    shared = None  # every case trains the same random-init base, built once (not measured)
    for case in spec["cases"]:
        cfg = from_yaml_file(case["config"])
        if shared is None:
            from hpcft.train.modeling import base_model_path

            shared = base_model_path(cfg.model, Path(spec["work"]) / "shared", seed=int(cfg.training.seed))
        cfg.model.source, cfg.model.path = "pretrained", shared
        settle()
        base = torch.cuda.memory_allocated() / MIB if cuda else _status_mib("VmRSS")
        marks.clear()
        t0 = time.time()
        try:
            s = run(cfg, RunContext(output_dir=Path(cfg.output_dir)))
        except Exception as e:  # report and go on with the next case
            print(json.dumps({"case": case["name"], "error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        print(json.dumps({"case": case["name"], "measured_mib": round(marks["peak"] - base, 1),
                          "baseline_mib": round(base, 1), "device": "cuda" if cuda else "cpu",
                          "params": s.get("total_params"), "trainable": s.get("trainable_params"),
                          "final_loss": s.get("final_train_loss"), "seconds": round(time.time() - t0, 1)}),
              flush=True)
        del s
    return 0


# ----------------------------------------------------------------------------------------------------- parent

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=None, help=f"comma-separated, of {','.join(CASES)},full_zero2 "
                                                  f"(default: {DEFAULT_CASES}; on a GPU {GPU_CASES})")
    ap.add_argument("--size", choices=sorted(SIZES), default=None, help="small (CPU default) or gpu (GPU default)")
    ap.add_argument("--steps", type=int, default=2, help="optimizer steps (2: the second step's peak holds AdamW's states)")
    ap.add_argument("--batch", type=int, default=None, help="training.batch_size (default: the size's)")
    ap.add_argument("--seq", type=int, default=None, help="training.sequence_length (default: the size's)")
    ap.add_argument("--work", default="/tmp/hpcft-bench-memory")
    ap.add_argument("--tolerance", type=float, default=0.25, help="exit 1 when |estimate/measured - 1| exceeds it")
    ap.add_argument("--json", action="store_true", help="one JSON object per case instead of the table")
    ap.add_argument("overrides", nargs="*", help="more overrides for every case, e.g. model.arch.num_hidden_layers=8")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(a.child)

    from omegaconf import OmegaConf, open_dict

    import hpcft.jobs.preflight
    from hpcft.config import memory

    gpu = _has_gpu()
    size = dict(SIZES[a.size or ("gpu" if gpu else "small")])
    size.update({k: v for k, v in (("batch", a.batch), ("seq", a.seq)) if v})
    cases = (a.cases or (GPU_CASES if gpu else DEFAULT_CASES)).split(",")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = write_data(work, size["seq"], size["completion"])
    spec, est = {"cases": [], "work": str(work)}, {}
    for case in cases:
        if case not in CASES and case != "full_zero2":
            print(f"unknown case {case}; choose from {', '.join(CASES)}, full_zero2", file=sys.stderr)
            return 2
        cfg = hpcft.jobs.preflight.load(case_overrides(case, size, data, a.steps, gpu, a.overrides))
        out = work / case
        with open_dict(cfg):
            cfg.output_dir = str(out)
        _fresh(out).joinpath("config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        e, why = memory.estimate_cfg(cfg)
        est[case] = (e, why)
        spec["cases"].append({"name": case, "config": str(out / "config.yaml")})
    warm = hpcft.jobs.preflight.load(["model=tiny", "method=pretrain", "resources=local", "data=custom",
                              f"data.train={data['text']}", "data.format=text", "training.max_steps=1",
                              "training.batch_size=2", "training.sequence_length=32", "training.keep_checkpoints=off"])
    with open_dict(warm):
        warm.output_dir = str(work / "warmup")
    _fresh(work / "warmup").joinpath("config.yaml").write_text(OmegaConf.to_yaml(warm, resolve=True))
    spec["warmup"] = str(work / "warmup" / "config.yaml")
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(work / "spec.json")],
                       cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows, ok = [], p.returncode == 0
    for line in p.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        e, why = est[r["case"]]
        if e is not None:
            r["estimate_mib"] = round(e.total / MIB, 1)
            r["parts_mib"] = {k: round(getattr(e, k) / MIB, 1) for k in
                              ("weights", "gradients", "optimizer", "activations", "logits")}
        if "measured_mib" in r and e is not None:
            r["ratio"] = round(r["estimate_mib"] / r["measured_mib"], 3)
            ok = ok and abs(r["ratio"] - 1) <= a.tolerance
        else:
            ok = False
        rows.append(r)
    if p.returncode != 0 or len(rows) != len(cases):
        print(p.stderr[-4000:], file=sys.stderr)
        ok = False
    if a.json:
        for r in rows:
            print(json.dumps(r))
    else:
        dev = rows[0].get("device", "?") if rows else "?"
        print(f"## memory estimate vs measured peak ({dev}, {time.strftime('%Y-%m-%d')}, "
              f"seq {size['seq']}, batch {size['batch']}, {a.steps} steps, {time.time() - t0:.0f} s)\n")
        print("| case | params (M) | trainable (M) | estimate (MiB) | measured (MiB) | estimate / measured |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            if "error" in r:
                print(f"| {r['case']} | failed: {r['error'][:80]} | | | | |")
                continue
            print(f"| {r['case']} | {r['params'] / 1e6:.2f} | {r['trainable'] / 1e6:.3f} | "
                  f"{r.get('estimate_mib', '-')} | {r['measured_mib']} | {r.get('ratio', '-')} |")
    return 0 if ok else 1


def _fresh(d: Path) -> Path:
    import shutil

    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
