"""Quiet by default, on real jobs: a tiny LoRA job started from another LoRA run (which merges it: the path that
prints all three), and `hpcft models export --merge`, are free of bitsandbytes' `Failed to load CPU
gemm_4bit_forward`, transformers' `is_gradient_checkpointing` FutureWarning, DeepSpeed's accelerator line and the
progress bars of transformers (`Loading weights`, a log is no terminal); the same with HPCFT_VERBOSE=1 (the control)
shows them, so the filter (hpcft.train.quiet) is what removes them."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli

pytestmark = pytest.mark.train

FAST = ["executor=local", "method=lora", "training.sequence_length=64", "training.batch_size=8",
        "training.max_steps=2"]
NOISE = ("Failed to load CPU gemm_4bit_forward from kernels-community", "`is_gradient_checkpointing` is deprecated",
         "Setting accelerator to CPU", "Loading weights", "Writing model shards")  # the last two: progress bars


def run(args, verbose=False, timeout=600):
    env = {k: v for k, v in os.environ.items() if k != "HPCFT_VERBOSE"}
    if verbose:
        env["HPCFT_VERBOSE"] = "1"
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout, env=env)


def job_log(job_id):
    job = next(j for j in json.loads(run(["list", "--json"]).stdout) if j["id"] == job_id)
    assert job["state"] == "success", job
    return (Path(job["output_dir"]) / "logs" / "job.log").read_text()


def test_lora_job_and_export_logs_are_free_of_third_party_noise(hpcft_home, tmp_path):
    first = run(["submit", *FAST, "--wait"])
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    quiet = run(["submit", *FAST, "model.path=job:1", "--wait"])
    loud = run(["submit", *FAST, "model.path=job:1", "--wait"], verbose=True)
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    quiet_log, loud_log = job_log(2), job_log(3)
    # the control: they are there to filter (which of them a run prints depends on the machine: bitsandbytes' needs
    # AVX512-BF16, DeepSpeed's whether it picked its accelerator in this process)
    assert len([n for n in NOISE if n in loud_log]) >= 2, loud_log
    assert [n for n in NOISE if n in quiet_log] == [], quiet_log
    assert "[hpcft] finished: step 2" in quiet_log and "step 2/2" in quiet_log  # the job's own lines all stay
    assert [n for n in NOISE if n in quiet.stdout + quiet.stderr] == []

    pub = run(["publish", "2", "--name", "quiet-tiny"])
    assert pub.returncode == 0, pub.stdout + pub.stderr
    exp = run(["models", "export", "quiet-tiny", "-o", str(tmp_path / "q"), "--merge"])
    loud_exp = run(["--verbose", "models", "export", "quiet-tiny", "-o", str(tmp_path / "v"), "--merge"])
    assert exp.returncode == 0 and loud_exp.returncode == 0, exp.stderr + loud_exp.stderr
    assert len([n for n in NOISE if n in loud_exp.stdout + loud_exp.stderr]) >= 2, loud_exp.stderr
    assert [n for n in NOISE if n in exp.stdout + exp.stderr] == [], exp.stderr
    assert f"exported quiet-tiny (merged) -> {tmp_path / 'q'}" in exp.stdout
