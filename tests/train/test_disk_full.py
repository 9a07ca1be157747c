"""A real full disk: the run directory on a small tmpfs, a checkpoint that does not fit, then more space and a resume.

Needs root (mount -t tmpfs); skipped with the reason otherwise.
"""

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[2]

from support.train_helpers import job_config  # noqa: E402

# the tiny Llama's LoRA run: base model + metrics ~460 KiB, each checkpoint ~128 KiB on tmpfs; 780 KiB holds the
# checkpoints of steps 2 and 4, not the one of step 6
SMALL, LARGE = "780k", "16m"
STEPS = ["method=lora", "training.batch_size=32", "training.sequence_length=48", "training.max_steps=8",
         "training.save_strategy=steps", "training.save_interval=2", "training.keep_checkpoints=all",
         "training.resume_from=latest"]


@contextmanager
def tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def run_entry(cfg_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg_path)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def test_full_disk_in_a_checkpoint_then_resume_after_freeing_space(tmp_path):
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from hpcft.train.checkpoint import LATEST, latest_checkpoint, read_state

    with tmpfs(tmp_path / "fs", SMALL) as fs:
        run = fs / "run"
        cfg = job_config(run, *STEPS)
        run.mkdir()
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        full = run_entry(run / "config.yaml")
        assert full.returncode == 74, full.stdout + full.stderr
        lines = [x for x in full.stderr.splitlines() if x.startswith("[hpcft]")]
        assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
        m = re.fullmatch(r"\[hpcft\] disk full: could not write (\S+): (\S+) has (.+) free of (.+); free space, "
                         r"then hpcft retry --exit-codes 74 or hpcft resume JOB", lines[0])
        assert m, lines[0]
        print(lines[0])
        assert m[1].startswith(f"{run}/checkpoints/step-00000006.tmp/") and m[2] == str(fs), lines[0]
        assert m[4] == "780.0 KiB" and re.fullmatch(r"\d+(\.\d)? (B|KiB)", m[3]), lines[0]
        ckpts = run / "checkpoints"
        assert not list(ckpts.glob("*.tmp")) and not (run / "final").exists()
        assert (ckpts / LATEST).read_text().strip() == "step-00000004" == latest_checkpoint(ckpts).name
        assert read_state(ckpts / "step-00000004")["step"] == 4
        assert load_file(str(ckpts / "step-00000004" / "trainable.safetensors"))

        subprocess.run(["mount", "-o", f"remount,size={LARGE}", str(fs)], check=True)
        resumed = run_entry(run / "config.yaml")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "resumed from" in resumed.stdout
        summary = json.loads((run / "summary.json").read_text())
        assert summary["final_step"] == 8 and summary["steps_this_run"] == 4
        assert (run / "final" / "adapter_model.safetensors").exists()
