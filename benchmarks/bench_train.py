"""The same fine-tuning job three ways on this CPU: hpcft, a bare transformers+peft loop, and LLaMA-Factory.

One random-init Llama of about 10M parameters (hidden 384, 6 layers, intermediate 1024, hpcft's byte tokenizer
saved with it) written once as a Hugging Face directory; one alpaca-style data set (written here); the same LoRA
rank/alpha/dropout/targets, batch, sequence length, learning rate (constant, no warmup, no weight decay, grad-norm
clip 1.0) and number of steps for all three. Each run is a separate process with the same OMP_NUM_THREADS, and
the runs alternate (A B C A B C ...), so that load from other work on the machine hits all of them alike.

    .venv/bin/python benchmarks/bench_train.py [--steps 10] [--repeats 2] [--threads 1] [--methods lora,full] [--cpu 1]
                                                [--ab-steps 60] [--no-peer] [--shape default|issue23]

`--shape issue23` (issue 23's 17M-parameter shape: vocabulary 8,000, batch 8 x 256; with `--threads 2 --steps 40`)
gives the bare loop fused AdamW, as hpcft has. Every hpcft run asks for `resources.cpus_per_task` = `--threads`:
a job binds torch's threads to its CPUs, and `resources=local` asks for one, so with `--threads 2` hpcft used to
run on one thread against the bare loop's two.

- hpcft: `python -m hpcft.train.entry --config RUN/config.yaml`, exactly what a job runs (local or Slurm).
- bare: the loop a user would write with transformers + peft (this file, `--bare`).
- LLaMA-Factory: `llamafactory==0.9.5` installed by this script into its own venv (default
  /tmp/hpcft-bench-llamafactory, next to CPU torch 2.13.0; torchvision removed and an empty torchaudio package,
  see /work/shared/notes/cpu-ml-stack.md), run through `llamafactory.train.tuner.run_exp` with a callback that
  times each optimizer step and counts non-padding tokens (attention_mask) in a forward pre-hook. Gradient
  checkpointing is turned off for it (its default is on, the others have none); skipped with a message when it
  cannot be installed.

Every record is longer than the sequence length, so every batch of every way is 4 x 128 tokens without padding
(with shorter records each tool's own shuffle order and prompt template changed the tokens per step, and with them
tokens/s, by up to 20%).

Reported per way and method: steady-state tokens/s (non-padding tokens, median over the last two thirds of the
steps, medians over repeats), whole-job wall time including start-up, peak RSS of the process, final loss; and
the ratios hpcft / bare and hpcft / LLaMA-Factory, also per repeat (each hpcft run against the other way's run
right after it: median and range).

Whole runs on a shared 2-vCPU machine move by +-15% from one to the next, more than the differences sought. So the
script also runs a step A/B in one process (`--ab-steps`, default 60 pairs): hpcft's own
`CausalLMRecipe.train_step`, built from the job's config by `setup()`, and the bare loop's step on its own copy
of the model, alternating on the same batches. It reports the median and quartiles of bare time / hpcft time
over the pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from run_config import write_config  # benchmarks/run_config.py

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 6,
        "num_key_value_heads": 6, "max_position_embeddings": 512, "tie_word_embeddings": False}
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
SEQ, BATCH, LR = 128, 4, 1e-4
# --shape: the model and batch of a run. issue23: the 17M-parameter shape of issue 23 (vocabulary 8,000, batch 8 x 256),
# where hpcft's step overhead showed against a bare loop with fused AdamW (run it with --threads 2 --steps 40)
SHAPES = {"default": {"arch": ARCH, "seq": 128, "batch": 4, "fused": False},
          "issue23": {"arch": {**ARCH, "vocab_size": 8000}, "seq": 256, "batch": 8, "fused": True}}
SHAPE = {"name": "default", "fused": False}


def set_shape(name: str) -> None:
    """The module's SEQ, BATCH, ARCH and the bare loop's optimizer (fused AdamW or plain) for shape `name`."""
    global SEQ, BATCH
    sh = SHAPES[name]
    ARCH.clear()
    ARCH.update(sh["arch"])
    SEQ, BATCH = sh["seq"], sh["batch"]
    SHAPE.update(name=name, fused=sh["fused"])


def bare_optimizer(params):
    """The bare loop's AdamW: fused (what transformers' Trainer picks with torch >= 2.8) for --shape issue23."""
    import torch

    return torch.optim.AdamW(params, lr=LR, weight_decay=0.0, fused=True if SHAPE["fused"] else None)
LF_VENV = Path("/tmp/hpcft-bench-llamafactory")
LF_VERSION = "0.9.5"
TORCH = "torch==2.13.0"


# ------------------------------------------------------------------------------------------------- shared inputs

def make_model(d: Path) -> Path:
    if (d / "config.json").exists():
        return d
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT))
    from hpcft.train.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    arch = dict(ARCH)
    arch.setdefault("vocab_size", len(tok))  # issue23: 8,000 (the byte tokenizer uses the first 260)
    cfg = LlamaConfig(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **arch)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    tmp = d.with_name(d.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(d)
    return d


def make_data(path: Path, n: int = 512) -> Path:
    rnd = random.Random(0)
    words = ("the a of model data train token layer batch step loss rank node slurm queue memory gradient "
             "adapter weight").split()
    with open(path, "w") as f:
        for i in range(n):
            # every record is longer than the sequence length in all three ways (~300 bytes of response), so each
            # batch is exactly BATCH x SEQ tokens without padding whatever order a tool shuffles in, and whatever
            # prompt its template adds (LLaMA-Factory's alpaca template starts with a 100-byte system line): the
            # work per step is the same for all three, and tokens/s compares the loops, not the batches
            out = " ".join(rnd.choice(words) for _ in range(rnd.randint(50, 70)))
            rec = {"instruction": f"Describe item {i}.", "input": "" if i % 2 else f"context {i % 7}", "output": out}
            f.write(json.dumps(rec) + "\n")
    return path


def n_params(model_dir: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


PIN: list[str] = []  # --cpu N: `taskset -c N` before every run


def run_proc(argv: list, env: dict, log: Path, timeout: int = 900) -> tuple[int, float, float]:
    """(exit code, wall seconds, peak RSS MiB of the process) for one whole job."""
    argv = [*PIN, *argv]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, wall, ru.ru_maxrss / 1024


def steady(tps: list) -> float:
    return statistics.median(tps[len(tps) // 3:])


# ------------------------------------------------------------------------------------------------- hpcft

def hpcft_config(out: Path, method: str, model_dir: Path, data: Path, steps: int) -> Path:
    """The run dir `out` with the config.yaml of the benchmark's job (what `hpcft submit` would write)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    ov = ["model=tiny", "model.source=pretrained", f"model.path={model_dir}", f"model.tokenizer={model_dir}",
          f"method={method}", "data=custom", f"data.train={data}", "data.format=alpaca", "resources=local",
          f"training.sequence_length={SEQ}", f"training.batch_size={BATCH}", f"training.max_steps={steps}",
          f"training.learning_rate={LR}", "training.warmup_ratio=0", "training.lr_decay_ratio=1",
          "training.weight_decay=0", "training.max_grad_norm=1.0", "training.log_interval=1",
          "training.keep_checkpoints=off", "training.save_strategy=steps", "training.save_interval=100000",
          # the CPUs the other ways get (OMP_NUM_THREADS): a job binds its threads to resources.cpus_per_task, and
          # resources=local asks for 1
          f"resources.cpus_per_task={os.environ.get('OMP_NUM_THREADS', '1')}"]
    if method == "lora":
        ov += [f"method.lora.rank={LORA['rank']}", f"method.lora.alpha={LORA['alpha']}",
               f"method.lora.dropout={LORA['dropout']}"]
    return write_config(out, ov)


def hpcft_run(work: Path, method: str, model_dir: Path, data: Path, steps: int, env: dict, tag: str) -> dict:
    out = work / f"hpcft-{method}-{tag}"
    hpcft_config(out, method, model_dir, data, steps)
    rc, wall, rss = run_proc([sys.executable, "-m", "hpcft.train.entry", "--config", str(out / "config.yaml")],
                             env, out / "run.log")
    if rc != 0:
        return {"failed": rc, "log": str(out / "run.log")}
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    tr = [r for r in recs if r.get("type") == "train"]
    return {"tps": steady([r["tokens_per_s"] for r in tr]), "wall": wall, "rss": rss, "loss": tr[-1]["loss"]}


# ------------------------------------------------------------------------------------------------- bare loop

ALPACA_IN = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
ALPACA = "### Instruction:\n{instruction}\n\n### Response:\n"


def bare_model(model_dir: str, method: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"],
                                                 lora_dropout=LORA["dropout"], target_modules=LORA["targets"],
                                                 task_type="CAUSAL_LM"))
    return model


def bare_step(model, opt, batch: list, pad_id: int) -> tuple[float, int]:
    """One step of the bare loop over [(input_ids, labels)]: pad, forward (the model's own loss), backward, clip,
    AdamW. (loss, non-padding tokens)."""
    import torch

    n = max(len(ids) for ids, _ in batch)
    input_ids = torch.tensor([ids + [pad_id] * (n - len(ids)) for ids, _ in batch])
    labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in batch])
    mask = torch.tensor([[1] * len(ids) + [0] * (n - len(ids)) for ids, _ in batch])
    loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach()), int(mask.sum())


def bare_main(spec: dict) -> None:
    """What a user writes with transformers + peft: tokenize, shuffle, pad, AdamW, clip, step."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(42)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = bare_model(spec["model"], spec["method"])
    samples = []
    for line in open(spec["data"]):
        r = json.loads(line)
        prompt = (ALPACA_IN if r.get("input") else ALPACA).format(**r)
        p = [tok.bos_token_id] + tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(r["output"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (p + a)[:SEQ]
        samples.append((ids, ([-100] * len(p) + a)[:SEQ]))
    opt = bare_optimizer([p for p in model.parameters() if p.requires_grad])
    order = list(range(len(samples)))
    random.Random(42).shuffle(order)
    model.train()
    log = []
    for step in range(spec["steps"]):
        t0 = time.perf_counter()
        lv, n_tok = bare_step(model, opt, [samples[i] for i in order[step * BATCH:(step + 1) * BATCH]],
                              tok.pad_token_id)
        dt = time.perf_counter() - t0
        log.append({"step": step + 1, "loss": lv, "tokens_per_s": n_tok / dt})
    Path(spec["out"]).write_text(json.dumps(log))


def bare_run(work: Path, method: str, model_dir: Path, data: Path, steps: int, env: dict, tag: str) -> dict:
    out = work / f"bare-{method}-{tag}.json"
    spec = {"model": str(model_dir), "data": str(data), "method": method, "steps": steps, "out": str(out),
            "shape": SHAPE["name"]}
    rc, wall, rss = run_proc([sys.executable, __file__, "--bare", json.dumps(spec)], env,
                             work / f"bare-{method}-{tag}.log")
    if rc != 0:
        return {"failed": rc, "log": str(work / f"bare-{method}-{tag}.log")}
    log = json.loads(out.read_text())
    return {"tps": steady([r["tokens_per_s"] for r in log]), "wall": wall, "rss": rss, "loss": log[-1]["loss"]}


# ------------------------------------------------------------------------------------------------- step A/B

def ab_main(spec: dict) -> None:
    """hpcft's optimizer step and the bare loop's, alternating in one process on the same batches: hpcft's is the
    job's own code (`CausalLMRecipe.setup()` from the job's config, then `train_step`, which is all the timed part
    of a step in a job), the bare one is `bare_step` on its own copy of the same model. Every pair of steps meets the
    same state of the machine, so the ratio of their times measures the loops, not the machine's mood: the
    noise that moves whole runs by +-15% here cancels in each pair. Writes each pair's times."""
    import torch

    sys.path.insert(0, str(ROOT))
    from hpcft.config.compose import from_yaml_file
    from hpcft.train import data as D
    from hpcft.train.context import RunContext
    from trainers.causal_lm import CausalLMRecipe

    cfg = from_yaml_file(spec["config"])
    recipe = CausalLMRecipe(cfg, RunContext.from_env(output_dir=cfg.output_dir, job_id=None))
    recipe.setup()
    recipe.engine.train()
    torch.manual_seed(42)
    bare = bare_model(spec["model"], spec["method"])
    bare.train()
    opt = bare_optimizer([p for p in bare.parameters() if p.requires_grad])
    batches = D.epoch_batches(len(recipe.train_set), 42, 0, BATCH, 1, 0, 1)
    pairs = []
    for k in range(spec["steps"]):
        micro = batches[k % len(batches)]
        same = [(list(s.input_ids), list(s.labels)) for s in (recipe.train_set.samples[i] for mb in micro for i in mb)]
        times = {}
        for way in (("hpcft", "bare") if k % 2 == 0 else ("bare", "hpcft")):  # each goes first every other step
            t0 = time.perf_counter()
            if way == "hpcft":
                loss, _ = recipe.train_step(micro)
                float(loss)  # the step's work is done (a no-op on the CPU; a sync on a GPU)
            else:
                bare_step(bare, opt, same, recipe.pad_id)
            times[way] = time.perf_counter() - t0
        pairs.append(times)
    Path(spec["out"]).write_text(json.dumps(pairs))


def ab_run(work: Path, method: str, model_dir: Path, data: Path, steps: int, env: dict) -> dict:
    """Median and quartiles of bare time / hpcft time over the pairs after the first third (warm-up)."""
    cfg = hpcft_config(work / f"ab-{method}", method, model_dir, data, steps)
    out = work / f"ab-{method}.json"
    spec = {"config": str(cfg), "model": str(model_dir), "method": method, "steps": steps, "out": str(out),
            "shape": SHAPE["name"]}
    rc, _, _ = run_proc([sys.executable, __file__, "--ab", json.dumps(spec)], env, work / f"ab-{method}.log")
    if rc != 0:
        return {"failed": rc, "log": str(work / f"ab-{method}.log")}
    pairs = json.loads(out.read_text())[steps // 3:]
    r = sorted(p["bare"] / p["hpcft"] for p in pairs)
    q = statistics.quantiles(r, n=4)
    return {"ratio": statistics.median(r), "q1": q[0], "q3": q[2], "pairs": len(r),
            "hpcft_ms": 1000 * statistics.median(p["hpcft"] for p in pairs),
            "bare_ms": 1000 * statistics.median(p["bare"] for p in pairs),
            # the fastest step of each: what a step costs when nothing else runs (on a loaded machine the
            # contention only ever adds time, so the minimum is the steadiest estimate of the work itself)
            "min_ratio": min(p["bare"] for p in pairs) / min(p["hpcft"] for p in pairs)}


# ------------------------------------------------------------------------------------------------- LLaMA-Factory

LF_RUNNER = textwrap.dedent('''
    import json, sys, time
    from transformers import TrainerCallback
    from llamafactory.train.tuner import run_exp

    args, out = json.loads(sys.argv[1]), sys.argv[2]
    log, state = [], {"tok": 0, "t0": 0.0, "hooked": False}

    class Timer(TrainerCallback):
        def on_train_begin(self, a, s, c, model=None, **kw):
            if model is not None and not state["hooked"]:
                def pre(mod, fargs, fkw):
                    m = fkw.get("attention_mask")
                    if m is not None:
                        state["tok"] += int(m.sum())
                model.register_forward_pre_hook(pre, with_kwargs=True)
                state["hooked"] = True
        def on_step_begin(self, a, s, c, **kw):
            state["tok"], state["t0"] = 0, time.perf_counter()
        def on_step_end(self, a, s, c, **kw):
            log.append({"step": s.global_step, "tokens_per_s": state["tok"] / (time.perf_counter() - state["t0"])})

    run_exp(args, callbacks=[Timer()])
    json.dump(log, open(out, "w"))
''')


def lf_python() -> Path | None:
    """The LLaMA-Factory venv's python, installing it first when needed; None (with a message) when impossible."""
    import shutil

    py = LF_VENV / "bin" / "python"
    ready = LF_VENV / "hpcft-bench-ready"  # written after a checked install: the import takes long to probe
    probe = [str(py), "-c", "import llamafactory.train.tuner"]
    if ready.exists():
        return py
    print(f"installing llamafactory=={LF_VERSION} into {LF_VENV} (a few minutes) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LF_VENV)], check=True)
        pip = [str(py), "-m", "pip", "install", "-q"]
        subprocess.run(pip + [TORCH], check=True)  # first, pinned: any other spec may pull a CUDA build
        cons = LF_VENV / "constraints.txt"
        cons.write_text(TORCH + "\n")
        subprocess.run(pip + [f"llamafactory=={LF_VERSION}", "-c", str(cons)], check=True)
        # the torchvision and torchaudio pip brings do not match torch 2.13 (their C++ ops fail to load): remove
        # both; llamafactory imports torchaudio, so an empty package stands in for it
        subprocess.run([str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)
        site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        ta = Path(site) / "torchaudio"
        shutil.rmtree(ta, ignore_errors=True)
        ta.mkdir()
        (ta / "__init__.py").write_text("")
        r = subprocess.run(probe, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "import failed")
        ready.write_text(f"llamafactory=={LF_VERSION} {TORCH}\n")
    except Exception as e:  # noqa: BLE001 - any failure means: skip the peer, say why
        print(f"LLaMA-Factory skipped: cannot install it ({e})", flush=True)
        return None
    return py


def lf_run(py: Path, work: Path, method: str, model_dir: Path, data: Path, steps: int, env: dict, tag: str) -> dict:
    import shutil

    ddir = work / "lf-data"
    ddir.mkdir(exist_ok=True)  # copied every run: the data of this run, never one left by an earlier one
    shutil.copy(data, ddir / "train.jsonl")
    (ddir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": "train.jsonl"}}))
    out = work / f"lf-{method}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    args = {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": method,
            "dataset": "bench", "dataset_dir": str(ddir), "template": "alpaca", "cutoff_len": SEQ,
            "output_dir": str(out), "per_device_train_batch_size": BATCH, "gradient_accumulation_steps": 1,
            "learning_rate": LR, "max_steps": steps, "lr_scheduler_type": "constant", "warmup_ratio": 0.0,
            "weight_decay": 0.0, "max_grad_norm": 1.0, "logging_steps": 1, "save_strategy": "no",
            "report_to": "none", "seed": 42, "disable_gradient_checkpointing": True, "bf16": False,
            "fp16": False, "overwrite_output_dir": True, "overwrite_cache": True, "dataloader_num_workers": 0,
            "preprocessing_num_workers": 1, "plot_loss": False}
    if method == "lora":
        args.update({"lora_rank": LORA["rank"], "lora_alpha": LORA["alpha"], "lora_dropout": LORA["dropout"],
                     "lora_target": ",".join(LORA["targets"])})
    runner = work / "lf_runner.py"
    runner.write_text(LF_RUNNER)
    steps_out = work / f"lf-{method}-{tag}.json"
    rc, wall, rss = run_proc([str(py), str(runner), json.dumps(args), str(steps_out)],
                             dict(env, DISABLE_VERSION_CHECK="1"), work / f"lf-{method}-{tag}.log")
    if rc != 0:
        return {"failed": rc, "log": str(work / f"lf-{method}-{tag}.log")}
    log = json.loads(steps_out.read_text())
    hist = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in hist if "loss" in h]
    return {"tps": steady([r["tokens_per_s"] for r in log]), "wall": wall, "rss": rss, "loss": losses[-1]}


# ------------------------------------------------------------------------------------------------- main

def report_runs(a, res: dict, ways: dict, methods: list, model_dir: Path) -> None:
    """The table of the whole runs: medians per way and method, and hpcft's ratios to the other ways."""
    print(f"\n## bench_train ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, OMP_NUM_THREADS={a.threads}, "
          f"{n_params(model_dir) / 1e6:.1f}M-param Llama, seq {SEQ}, batch {BATCH}, lr {LR}, {a.steps} steps, "
          f"LoRA r{LORA['rank']}, shape {a.shape}, bare AdamW {'fused' if SHAPE['fused'] else 'plain'}, "
          f"medians of {a.repeats}{f', pinned to CPU {a.cpu}' if a.cpu else ''})\n")
    print("| method | way | tokens/s | wall (s) | peak RSS (MiB) | final loss | tokens/s vs hpcft |")
    print("|---|---|---|---|---|---|---|")
    for m in methods:
        ok = {w: [r for r in res[(w, m)] if "failed" not in r] for w in ways}
        med = {w: {k: statistics.median(r[k] for r in rs) for k in ("tps", "wall", "rss", "loss")}
               for w, rs in ok.items() if rs}
        for w in ways:
            if w not in med:
                print(f"| {m} | {w} | failed: {res[(w, m)][0].get('log')} | | | | |")
                continue
            x = med[w]
            rel = f"{x['tps'] / med['hpcft']['tps']:.3f}" if "hpcft" in med else "-"
            print(f"| {m} | {w} | {x['tps']:,.0f} | {x['wall']:.1f} | {x['rss']:.0f} | {x['loss']:.4f} | {rel} |")
        if "hpcft" in med:
            for w in med:
                if w != "hpcft":
                    # each repeat's hpcft run against the same repeat's run of w (adjacent in time)
                    paired = sorted(h["tps"] / o["tps"] for h, o in zip(res[("hpcft", m)], res[(w, m)], strict=True)
                                    if "failed" not in h and "failed" not in o)
                    print(f"{m}: hpcft / {w} tokens/s = {med['hpcft']['tps'] / med[w]['tps']:.3f} (median of "
                          f"per-repeat ratios {statistics.median(paired):.3f}, range {paired[0]:.3f}-"
                          f"{paired[-1]:.3f}), wall = {med['hpcft']['wall'] / med[w]['wall']:.3f}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/hpcft-bench-train")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every run")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--no-peer", action="store_true", help="skip LLaMA-Factory")
    ap.add_argument("--cpu", help="run every job on this CPU only (taskset -c): the scheduler cannot move it, "
                                  "which narrows the spread between repeats")
    ap.add_argument("--ab-steps", type=int, default=60,
                    help="pairs of steps in the in-process A/B of hpcft's step and the bare loop's (0: none)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="default",
                    help="issue23: hidden 384, 6 layers, vocabulary 8000, batch 8 x 256, the bare loop with fused AdamW")
    ap.add_argument("--bare", help=argparse.SUPPRESS)
    ap.add_argument("--ab", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.bare:
        spec = json.loads(a.bare)
        set_shape(spec.get("shape", "default"))
        bare_main(spec)
        return 0
    if a.ab:
        spec = json.loads(a.ab)
        set_shape(spec.get("shape", "default"))
        ab_main(spec)
        return 0
    set_shape(a.shape)
    if a.cpu is not None:
        PIN[:] = ["taskset", "-c", a.cpu]
    t_all = time.perf_counter()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(work / ("model" if a.shape == "default" else f"model-{a.shape}"))
    data = make_data(work / "train.jsonl")
    os.environ["OMP_NUM_THREADS"] = str(a.threads)  # hpcft_config reads it: the job's resources.cpus_per_task
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", HPCFT_HOME=str(work / "home"))
    py = None if a.no_peer else lf_python()
    ways = {"hpcft": lambda m, t: hpcft_run(work, m, model_dir, data, a.steps, env, t),
            "bare": lambda m, t: bare_run(work, m, model_dir, data, a.steps, env, t)}
    if py is not None:
        ways["llamafactory"] = lambda m, t: lf_run(py, work, m, model_dir, data, a.steps, env, t)
    methods = a.methods.split(",")
    res: dict = {(w, m): [] for w in ways for m in methods}
    for rep in range(a.repeats):  # A B C, C B A, A B C: the machine's load (and its drift) hits every way alike
        for m in methods:
            for w in (list(ways) if rep % 2 == 0 else list(ways)[::-1]):
                r = ways[w](m, str(rep))
                print(json.dumps({"way": w, "method": m, "repeat": rep, **r}), flush=True)
                res[(w, m)].append(r)
    if a.repeats:
        report_runs(a, res, ways, methods, model_dir)
    if a.ab_steps:
        print(f"\nIn-process step A/B ({a.ab_steps} pairs, hpcft's train_step and the bare step alternating on the "
              "same batches; ratios over the last two thirds):\n")
        print("| method | hpcft step (ms) | bare step (ms) | hpcft speed / bare (median of pairs) | quartiles | "
              "fastest bare / fastest hpcft |")
        print("|---|---|---|---|---|---|")
        for m in methods:
            r = ab_run(work, m, model_dir, data, a.ab_steps, env)
            if "failed" in r:
                print(f"| {m} | failed: {r['log']} | | | | |")
                continue
            print(f"| {m} | {r['hpcft_ms']:.0f} | {r['bare_ms']:.0f} | {r['ratio']:.3f} | "
                  f"{r['q1']:.3f}-{r['q3']:.3f} | {r['min_ratio']:.3f} |", flush=True)
    print(f"\nwhole script: {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
