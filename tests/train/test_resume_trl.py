"""The trl trainers (reward, DPO with LoRA, GRPO) on hpcft's trainer core: a run killed between checkpoints and
resumed ends exactly where an uninterrupted run ends (same steps, same losses, same weights), the lr follows
hpcft.train.schedule, the time-limit warning (SIGUSR1) saves and exits 75 without losing a step, and a
half-written checkpoint is never resumed from.

Tiny runs on a small slice of the shipped data: 6 optimizer steps per epoch, 12 steps = 2 epochs."""

import os
import shutil
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
DATA = REPO / "hpcft" / "assets" / "data"
STEPS, PER_EPOCH = 12, 6
LR, WARMUP, DECAY = 5e-3, 0.25, 0.1


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


def _slice(src: Path, dest: Path, n: int) -> str:
    dest.write_text("".join(src.read_text().splitlines(keepends=True)[:n]))
    return str(dest)


def overrides(method: str, out: Path, *extra: str) -> list:
    """12 steps (2 epochs of 6) with warmup and cosine decay, a checkpoint every 4 steps (keep 2)."""
    common = [f"training.max_steps={STEPS}", "training.epochs=2", f"training.learning_rate={LR}",
              f"training.warmup_ratio={WARMUP}", f"training.lr_decay_ratio={DECAY}", "training.batch_size=8",
              "training.save_strategy=steps", "training.save_interval=4", "training.keep_checkpoints=2"]
    if method == "grpo":  # resume from the end of epoch 1, saved before that epoch's evaluation samples
        common.append("training.save_interval=3")
    if method == "grpo":  # 8 completions = 2 prompts x 4 generations per step: 12 prompts = 6 steps
        name, n = "tiny_prompts", 2 * PER_EPOCH
        method_args = ["method=grpo", "method.num_generations=4", "method.max_completion_length=8",
                       "method.reward_functions=[char_fraction:abcdefghijklmnopqrstuvwxyz]"]
    else:  # 48 pairs / batch 8 = 6 steps
        name, n = "tiny_pref", 8 * PER_EPOCH
        method_args = [f"method={method}", "training.sequence_length=64"]
    data = out / "data"  # each run its own copy: run A writes while run B reads
    data.mkdir(parents=True, exist_ok=True)
    train = _slice(DATA / name / "train.jsonl", data / "train.jsonl", n)
    val = _slice(DATA / name / "validation.jsonl", data / "validation.jsonl", 8)
    return [*method_args, f"data={name}", f"data.train={train}", f"data.validation={val}", "data.test=null",
            *common, *extra]


def write_config(out: Path, method: str, *extra: str) -> Path:
    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    cfg = job_config(out, *overrides(method, out, *extra))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    return out / "config.yaml"


def entry_cmd(cfg_path: Path) -> list:
    return [sys.executable, "-m", "hpcft.train.entry", "--config", str(cfg_path)]


def start_entry(cfg_path: Path, **env_extra: str) -> subprocess.Popen:
    """`python -m hpcft.train.entry` in the background (its output in <run>/entry.log)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env_extra)
    with open(cfg_path.parent / "entry.log", "w") as log:
        return subprocess.Popen(entry_cmd(cfg_path), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_entry(proc: subprocess.Popen, cfg_path: Path, expect: int) -> None:
    try:
        code = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == expect, (cfg_path.parent / "entry.log").read_text()[-4000:]


def train_in_process(cfg_path: Path) -> dict:
    """The same run as `python -m hpcft.train.entry` (no subprocess: no second import of torch and trl)."""
    from hpcft.config.compose import from_yaml_file
    from hpcft.train.entry import run

    cfg = from_yaml_file(str(cfg_path))
    return run(cfg, ctx_for(cfg.output_dir))


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    files = sorted((run_dir / "final").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'final'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(str(f)).items()}


def last_per_step(rows: list) -> dict:
    return {r["step"]: r for r in rows}  # a resumed run appends the steps it redoes: the last line wins


# killed after step `crash`; the newest checkpoint is then `resumed` (epoch, step in epoch); reward and DPO resume
# inside the second epoch (the data skipped and reshuffled as in run A); GRPO resumes from the checkpoint at the end
# of the first epoch, written before that epoch's evaluation sampled completions (the RNG in run A moved on)
RESUME = {"reward": (10, 8, (1, 2), [4, 8]), "dpo": (10, 8, (1, 2), [4, 8]), "grpo": (8, 6, (1, 0), [3, 6])}


@pytest.mark.parametrize("method", list(RESUME))
def test_killed_run_resumes_exactly_like_an_uninterrupted_one(tmp_path, method, capsys):
    import torch

    from hpcft.train.checkpoint import latest_checkpoint, read_state
    from hpcft.train.schedule import lr_at

    a, b = tmp_path / "a", tmp_path / "b"
    # run B, killed between checkpoints, in a subprocess while run A trains here (2 cores: half the wall time)
    crash, resumed, (epoch, in_epoch), kept = RESUME[method]
    cfg_b = write_config(b, method)
    killed = start_entry(cfg_b, HPCFT_TEST_CRASH_AT_STEP=str(crash))
    summary_a = train_in_process(write_config(a, method))
    assert summary_a["final_step"] == summary_a["total_steps"] == STEPS
    rows_a = metrics_rows(a, "train")
    assert [r["step"] for r in rows_a] == list(range(1, STEPS + 1))
    # the one lr schedule (hpcft.train.schedule), not transformers': warmup, then cosine to lr x decay
    for r in rows_a:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, STEPS, LR, WARMUP, DECAY), rel=1e-6), r

    # run B: no final/, the newest complete checkpoint is the last one before the crash
    wait_entry(killed, cfg_b, -signal.SIGKILL)
    ckpt = latest_checkpoint(b / "checkpoints")
    assert ckpt.name == f"step-{resumed:08d}" and not (b / "final").exists()
    assert sorted(d.name for d in (b / "checkpoints").glob("step-*")) == [f"step-{s:08d}" for s in kept]
    state = read_state(ckpt)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (resumed, epoch, in_epoch)
    assert (state["reason"], state["method"], state["world_size"]) == ("interval", method, 1)

    # the default resume_from=latest continues from it
    summary_b = train_in_process(cfg_b)
    assert f"resumed from {ckpt}" in capsys.readouterr().out
    assert summary_b["final_step"] == STEPS and summary_b["steps_this_run"] == STEPS - resumed
    assert summary_b["resumed_from"] == str(ckpt)
    rows_b = metrics_rows(b, "train")
    assert [r["step"] for r in rows_b] == list(range(1, crash + 1)) + list(range(resumed + 1, STEPS + 1))
    # the steps after the resume saw the same data with the same weights, optimizer, lr and RNG as run A
    la, lb = last_per_step(rows_a), last_per_step(rows_b)
    for step in range(resumed + 1, STEPS + 1):
        for key in ("loss", "reward", "rewards/margins", "accuracy"):  # GRPO's loss is ~0: its reward tells more
            if key in la[step]:
                assert lb[step][key] == pytest.approx(la[step][key], abs=1e-5), (step, key, la[step], lb[step])
        assert lb[step]["lr"] == pytest.approx(la[step]["lr"], rel=1e-9)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-5), k


def test_warning_signal_saves_exits_75_and_the_rerun_loses_no_step(tmp_path, capsys):
    """SIGUSR1 (the time-limit warning) mid-run: a checkpoint at the step where it stopped, exit 75, no final/;
    the rerun continues from exactly that step."""
    from hpcft.train.checkpoint import latest_checkpoint, read_state

    run = tmp_path / "run"
    cfg = write_config(run, "dpo", "training.save_interval=100")  # no interval checkpoints: only the warning's
    proc = start_entry(cfg, HPCFT_TEST_STEP_DELAY_S="0.3")
    deadline = time.time() + 300
    while not any(r["step"] >= 3 for r in metrics_rows(run, "train")):  # training: the handler is installed
        if proc.poll() is not None or time.time() > deadline:
            wait_entry(proc, cfg, 75)  # fails with the log
        time.sleep(0.1)
    proc.send_signal(signal.SIGUSR1)
    wait_entry(proc, cfg, 75)
    stopped = metrics_rows(run, "train")[-1]["step"]
    assert 3 <= stopped < STEPS
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt.name == f"step-{stopped:08d}" and read_state(ckpt)["reason"] == "warning"
    assert not (run / "final").exists() and not (run / "summary.json").exists()

    summary = train_in_process(cfg)
    assert f"resumed from {ckpt}" in capsys.readouterr().out
    assert summary["final_step"] == STEPS and summary["steps_this_run"] == STEPS - stopped
    assert [r["step"] for r in metrics_rows(run, "train")] == list(range(1, STEPS + 1))  # none lost, none redone
    assert (run / "final" / "adapter_model.safetensors").is_file()


def test_half_written_checkpoint_is_never_resumed_from_and_is_cleaned(tmp_path, capsys):
    """Killed while saving step 8: transformers' staging dir checkpoint-8 holds its files but was never
    published (no state.json, `latest` still names step 4). The rerun resumes from step 4 and removes it.
    Then killed after the last step's checkpoint, before final/: the rerun trains no further step."""
    from hpcft.train.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    cfg = write_config(run, "reward", "training.max_steps=8")  # ends inside the second epoch
    wait_entry(start_entry(cfg, HPCFT_TEST_CRASH_IN_SAVE="8"), cfg, -signal.SIGKILL)
    root = run / "checkpoints"
    staging = root / "checkpoint-8"
    assert (staging / "trainer_state.json").is_file() and (staging / "optimizer.pt").is_file()
    assert not (staging / "state.json").exists() and not (root / "step-00000008").exists()
    assert latest_checkpoint(root) == root / "step-00000004"
    (staging / "marker").write_text("half-written")

    summary = train_in_process(cfg)
    assert f"resumed from {root / 'step-00000004'}" in capsys.readouterr().out
    assert summary["resumed_from"] == str(root / "step-00000004") and summary["steps_this_run"] == 4
    assert not list(root.glob("checkpoint-*"))
    assert (root / "step-00000008" / "state.json").is_file() and not (root / "step-00000008" / "marker").exists()
    assert latest_checkpoint(root) == root / "step-00000008"

    # as if killed between the last checkpoint and final/: transformers would train a 9th step; hpcft does not
    weights = final_weights(run)
    shutil.rmtree(run / "final")
    (run / "summary.json").unlink()
    again = train_in_process(cfg)
    assert (again["final_step"], again["steps_this_run"], again["total_steps"]) == (8, 0, 8)
    assert set(again["eval"]) == {"validation"}
    assert [r["step"] for r in metrics_rows(run, "train")] == list(range(1, 9)) + list(range(5, 9))
    rewritten = final_weights(run)
    assert rewritten.keys() == weights.keys() and all(rewritten[k].equal(v) for k, v in weights.items())
