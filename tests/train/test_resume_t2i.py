"""t2i_lora checkpoints and resume: killed or stopped at the time-limit warning, a run continues from its latest
checkpoint and ends with the weights of an uninterrupted run; the epoch save policy honours save_interval.

The killed / signalled runs are subprocesses (`python -m hpcft.train.entry`); the uninterrupted run and the
reruns train in this process (the imports are paid once)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import ctx_for, job_config, metrics_rows, torch_threads  # noqa: E402

pytestmark = pytest.mark.train
REPO = Path(__file__).resolve().parents[2]

BASE = ["+experiment=t2i_lora_tiny", "method.num_inference_steps=2", "training.log_sample_ids=true"]
# 24 images / batch 4 = 6 steps per epoch; 8 steps cross an epoch boundary (eval + a sample image at its end)
EIGHT = [*BASE, "training.max_steps=8", "method.num_sample_images=1", "training.save_strategy=steps"]


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def train(out, *overrides):
    import trainers.text_to_image as t2i

    return t2i.train(job_config(out, *overrides), ctx_for(out))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("a")
    with torch_threads(1):
        summary = train(out, *EIGHT, "training.keep_checkpoints=off")
    assert summary["final_step"] == 8 and summary["steps_this_run"] == 8
    return out, summary


def start_entry(out: Path, overrides, env_extra) -> subprocess.Popen:
    from omegaconf import OmegaConf

    out.mkdir()
    (out / "config.yaml").write_text(OmegaConf.to_yaml(job_config(out, *overrides)))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_extra)
    return subprocess.Popen([sys.executable, "-m", "hpcft.train.entry", "--config", str(out / "config.yaml")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def assert_same_weights(a: Path, b: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from trainers.text_to_image import LORA_FILE

    wa, wb = load_file(str(a / "final" / LORA_FILE)), load_file(str(b / "final" / LORA_FILE))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_resume_after_kill_matches_uninterrupted_run(uninterrupted, tmp_path):
    from hpcft.train.checkpoint import latest_checkpoint, read_state

    a, summary_a = uninterrupted
    b = tmp_path / "b"
    overrides = [*EIGHT, "training.save_interval=4", "training.keep_checkpoints=2"]
    p = start_entry(b, overrides, {"HPCFT_TEST_CRASH_AT_STEP": "7"})
    log = p.communicate(timeout=600)[0]
    assert p.returncode == -signal.SIGKILL, log
    ck = latest_checkpoint(b / "checkpoints")
    assert ck.name == "step-00000004" and not (b / "final").exists()
    state = read_state(ck)
    assert (state["epoch"], state["step_in_epoch"], state["reason"], state["world_size"]) == (0, 4, "interval", 1)
    assert sorted(f.name for f in ck.iterdir()) == ["optimizer.pt", "pytorch_lora_weights.safetensors",
                                                    "rng-rank0.pt", "state.json"]

    summary_b = train(b, *overrides)  # resume_from=latest (the default)
    assert summary_b["final_step"] == summary_a["final_step"] == 8
    assert summary_b["steps_this_run"] == 4 and summary_b["resumed_from"] == str(ck)
    rows = metrics_rows(b, "train")
    assert [r["step"] for r in rows] == list(range(1, 8)) + [5, 6, 7, 8]  # only the steps after step 4 redone
    seen_b = {r["step"]: r["samples"] for r in rows}  # the later line of a redone step wins
    assert seen_b == {r["step"]: r["samples"] for r in metrics_rows(a, "train")}
    assert [(r["split"], r["epoch"]) for r in metrics_rows(b, "eval")][-4:] == [
        ("validation", 1), ("test", 1), ("validation", 2), ("test", 2)]
    assert_same_weights(a, b)
    assert abs(summary_a["final_train_loss"] - summary_b["final_train_loss"]) < 1e-5
    assert summary_b["final_metrics"] == pytest.approx(summary_a["final_metrics"], abs=1e-5)


def test_warning_signal_saves_at_the_stopping_step_and_exits_75(uninterrupted, tmp_path):
    from hpcft.exitcodes import SAVED_AT_WARNING
    from hpcft.train.checkpoint import latest_checkpoint, read_state, step_dir_name

    a, summary_a = uninterrupted
    c = tmp_path / "c"
    overrides = [*EIGHT, "training.save_interval=100"]  # no interval saves: the only checkpoint is the warning's
    p = start_entry(c, overrides, {"HPCFT_TEST_STEP_DELAY_S": "0.3"})
    deadline = time.time() + 300
    while not any(r["step"] >= 2 for r in metrics_rows(c, "train")):  # mid-run, the handler is installed
        assert p.poll() is None and time.time() < deadline, p.communicate()[0]
        time.sleep(0.05)
    p.send_signal(signal.SIGUSR1)
    log = p.communicate(timeout=300)[0]
    assert p.returncode == SAVED_AT_WARNING, log
    stopped = metrics_rows(c, "train")[-1]["step"]
    assert 2 <= stopped < 8, log
    ck = latest_checkpoint(c / "checkpoints")
    assert ck.name == step_dir_name(stopped) and read_state(ck)["reason"] == "warning"
    assert not (c / "final").exists() and not (c / "summary.json").exists()

    summary_c = train(c, *overrides)
    assert summary_c["final_step"] == 8 and summary_c["steps_this_run"] == 8 - stopped
    assert [r["step"] for r in metrics_rows(c, "train")] == list(range(1, 9))  # nothing redone
    assert_same_weights(a, c)


def test_epoch_strategy_saves_every_save_interval_epochs(tmp_path):
    from hpcft.train.checkpoint import read_state

    # batch 8: 3 steps per epoch, 4 epochs; save_interval=2 saves after epochs 2 and 4 only
    s = train(tmp_path, *BASE, "training.epochs=4", "training.batch_size=8",
              "training.save_strategy=epoch", "training.save_interval=2", "method.num_sample_images=0")
    assert s["final_step"] == 12
    cks = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [d.name for d in cks] == ["step-00000006", "step-00000012"]
    assert [(read_state(d)["epoch"], read_state(d)["step_in_epoch"], read_state(d)["reason"]) for d in cks] == [
        (2, 0, "epoch"), (4, 0, "epoch")]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000012"


def test_resume_refuses_another_world_size(tmp_path):
    from hpcft.errors import ConfigError
    from trainers.text_to_image import check_resume_world

    check_resume_world({"world_size": 2}, 2, tmp_path)
    with pytest.raises(ConfigError, match=r"written by 2 processes, this run has 1: resume with the same number"):
        check_resume_world({"world_size": 2}, 1, tmp_path)
