"""The memory estimate (hpcft.config.memory) against real CPU runs: one child process trains every LM method and
measures each run's peak resident set (benchmarks/bench_memory.py); the estimate must be within 25% of it."""

import json
import os
import subprocess
import sys

import pytest
from support import ROOT


CPU_CASES = ("pretrain", "full", "lora", "lora_gc", "qlora", "reward", "dpo", "grpo")


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory):
    """One child process really trains every LM method on CPU (a ~7M-parameter Llama, vocabulary 8000, batch 4 x
    128 tokens, 2 steps) and measures each run's peak resident set above its baseline (benchmarks/bench_memory.py
    says how); the estimates are computed from the same configs."""
    work = tmp_path_factory.mktemp("bench-memory")
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--json", "--batch", "4",
                        "--cases", ",".join(CPU_CASES), "--work", str(work)],
                       capture_output=True, text=True, cwd=ROOT, timeout=900,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1"))
    rows = {r["case"]: r for r in map(json.loads, (x for x in p.stdout.splitlines() if x.startswith("{")))}
    assert set(rows) == set(CPU_CASES), p.stdout + p.stderr[-3000:]
    return rows


@pytest.mark.train
@pytest.mark.slow
@pytest.mark.parametrize("case", CPU_CASES)
def test_estimate_within_25_percent_of_the_measured_cpu_peak(cpu_runs, case):
    r = cpu_runs[case]
    assert "error" not in r, r
    assert r["device"] == "cpu" and r["final_loss"] == r["final_loss"]  # a real run with a finite loss
    assert r["measured_mib"] > 60, r  # the model and its activations dominate the resident set's noise
    assert r["estimate_mib"] / r["measured_mib"] == pytest.approx(1.0, abs=0.25), r


@pytest.mark.train
@pytest.mark.slow
def test_gradient_checkpointing_really_saves_memory(cpu_runs):
    assert cpu_runs["lora_gc"]["measured_mib"] < 0.85 * cpu_runs["lora"]["measured_mib"]
    assert cpu_runs["lora_gc"]["final_loss"] == pytest.approx(cpu_runs["lora"]["final_loss"], rel=1e-3)
