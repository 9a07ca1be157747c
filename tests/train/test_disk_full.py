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


def fill(fs: Path) -> Path:
    """Another writer takes every free byte of the filesystem (a scratch filling up under a running job)."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("interval,where,method", [
    (5, "checkpoint", ["method=lora"]),
    (40, "between checkpoints", ["method=lora"]),
    (5, "checkpoint", ["method=full", "deepspeed=zero2"]),  # DeepSpeed's own checkpoint writer (one process)
    (5, None, ["method=dpo", "data=tiny_pref"]),  # trl's trainer: its longer metrics lines may fill a page first
], ids=["lora-checkpoint", "lora-metrics", "deepspeed-checkpoint", "dpo-checkpoint"])
def test_the_disk_filling_up_mid_run_is_one_line_then_resume(tmp_path, interval, where, method):
    """Wherever the trainer writes when the filesystem fills (filled right after its first checkpoint: the next
    checkpoint, or, with checkpoints far apart, what it writes between them: metrics, the monitor's samples, the
    journal): exit code 74 and one line naming the file and the filesystem, no traceback, no staging directory
    left, `latest` complete; with space freed, the resume continues from it and finishes."""
    from omegaconf import OmegaConf

    from hpcft.train.checkpoint import LATEST, latest_checkpoint, read_state

    total = 3 * interval
    steps = [*method, "training.batch_size=8", "training.sequence_length=48", f"training.max_steps={total}",
             "training.save_strategy=steps", f"training.save_interval={interval}", "training.keep_checkpoints=2",
             "training.resume_from=latest"]
    with tmpfs(tmp_path / "fs", LARGE) as fs:
        run = fs / "run"
        cfg = job_config(run, *steps)
        run.mkdir()
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2", HPCFT_TEST_STEP_DELAY_S="0.2")
        proc = subprocess.Popen([sys.executable, "-m", "hpcft.train.entry", "--config", str(run / "config.yaml")],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            for _ in range(600):  # until the first checkpoint is complete
                if (run / "checkpoints" / LATEST).exists() or proc.poll() is not None:
                    break
                import time

                time.sleep(0.2)
            assert proc.poll() is None, proc.communicate()
            filler = fill(fs)
            out, err = proc.communicate(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 74, out + err
        lines = [x for x in err.splitlines() if x.startswith("[hpcft]")]
        assert len(lines) == 1 and "Traceback" not in err, err
        m = re.fullmatch(r"\[hpcft\] disk full: could not write (\S+): (\S+) has (.+) free of (.+); free space, "
                         r"then hpcft retry --exit-codes 74 or hpcft resume JOB", lines[0])
        assert m and m[1].startswith(f"{run}/") and m[2] == str(fs), lines[0]
        if where is not None:
            assert (m[1].startswith(f"{run}/checkpoints/")) == (where == "checkpoint"), lines[0]
        print(lines[0])
        ckpts = run / "checkpoints"
        assert not list(ckpts.glob("*.tmp")) and not (run / "final.tmp").exists() and not (run / "final").exists()
        last = latest_checkpoint(ckpts)
        assert last is not None and (ckpts / LATEST).read_text().strip() == last.name
        step = read_state(last)["step"]

        filler.unlink()
        resumed = run_entry(run / "config.yaml")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        summary = json.loads((run / "summary.json").read_text())
        assert summary["final_step"] == total and summary["steps_this_run"] == total - step


def test_a_final_model_that_does_not_fit_is_one_line_and_leaves_no_staging_dir(tmp_path):
    """No checkpoints, a filesystem that holds the base model and the metrics but not the final model: exit code 74,
    one line naming a file under final.tmp/, neither final.tmp nor a partial final left."""
    from omegaconf import OmegaConf

    with tmpfs(tmp_path / "fs", "500k") as fs:
        run = fs / "run"
        cfg = job_config(run, "method=lora", "training.batch_size=32", "training.sequence_length=48",
                         "training.max_steps=4", "training.keep_checkpoints=off")
        run.mkdir()
        (run / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        full = run_entry(run / "config.yaml")
        assert full.returncode == 74, full.stdout + full.stderr
        lines = [x for x in full.stderr.splitlines() if x.startswith("[hpcft]")]
        assert len(lines) == 1 and "Traceback" not in full.stderr, full.stderr
        assert lines[0].startswith(f"[hpcft] disk full: could not write {run}/final.tmp/"), lines[0]
        print(lines[0])
        assert not (run / "final.tmp").exists() and not (run / "final").exists()
        assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())
