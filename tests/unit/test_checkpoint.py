import json

import pytest

from hpcft.train.checkpoint import (
    LATEST,
    STATE_FILE,
    CheckpointManager,
    latest_checkpoint,
    list_checkpoints,
    load_rng,
    load_trainable,
    read_state,
    resolve_resume,
    save_rng,
    save_trainable,
    should_save,
)


def writer(step, payload="w"):
    def write(d):
        (d / "weights.bin").write_text(f"{payload}{step}")
    return write


STATE = {"epoch": 0, "step_in_epoch": 1, "job_id": 7, "reason": "interval"}


class Crash(Exception):
    pass


def test_save_publishes_latest(tmp_path):
    m = CheckpointManager(tmp_path / "checkpoints", keep="all")
    p = m.save(10, writer(10), STATE)
    assert p.name == "step-00000010" and (p / "weights.bin").read_text() == "w10"
    assert (tmp_path / "checkpoints" / LATEST).read_text().strip() == "step-00000010"
    assert latest_checkpoint(tmp_path / "checkpoints") == p
    assert resolve_resume("latest", tmp_path) == p
    assert resolve_resume(str(p), tmp_path) == p
    assert resolve_resume(None, tmp_path) is None


def test_resume_latest_without_checkpoints_is_fresh(tmp_path):
    assert resolve_resume("latest", tmp_path) is None


def test_crash_mid_save_keeps_latest_valid(tmp_path):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root, keep="all")
    good = m.save(5, writer(5), STATE)

    def crashing(d):
        (d / "weights.bin").write_text("half")
        raise Crash()

    with pytest.raises(Crash):
        m.save(10, crashing, STATE)
    # a failing save removes its own staging dir; latest still names the complete step 5
    assert not (root / "step-00000010.tmp").exists()
    assert not (root / "step-00000010").exists()
    assert latest_checkpoint(root) == good
    assert (root / LATEST).read_text().strip() == good.name
    assert list_checkpoints(root) == [good]
    # a crash after the rename but before `latest` moved: latest still points at a complete checkpoint
    # a process killed mid-save (SIGKILL: no cleanup) leaves its .tmp; the next save cleans the stale tmp dir
    (root / "step-00000012.tmp").mkdir()
    (root / "step-00000012.tmp" / "weights.bin").write_text("half")
    p = CheckpointManager(root, keep="all").save(15, writer(15), STATE)
    assert not list(root.glob("*.tmp"))
    assert latest_checkpoint(root) == p


def test_state_is_written_by_the_manager_with_the_step(tmp_path):
    root = tmp_path / "checkpoints"
    p = CheckpointManager(root).save(4, writer(4), STATE)
    st = read_state(p)
    assert st["step"] == 4 and st["job_id"] == 7 and st["reason"] == "interval" and st["saved_at"] > 0
    assert (p / STATE_FILE).is_file()


def test_publish_a_staging_dir_written_by_someone_else(tmp_path):
    """transformers' Trainer writes checkpoints/checkpoint-N itself; publish makes it step-N atomically."""
    root = tmp_path / "checkpoints"
    staging = root / "checkpoint-6"
    staging.mkdir(parents=True)
    (staging / "trainer_state.json").write_text("{}")
    p = CheckpointManager(root).publish(staging, 6, STATE)
    assert p.name == "step-00000006" and (p / "trainer_state.json").is_file() and not staging.exists()
    assert latest_checkpoint(root) == p and read_state(p)["step"] == 6
    # a half-written staging dir left by a crash is never listed and is cleaned by the next start
    (root / "checkpoint-9").mkdir()
    (root / "step-00000012.tmp").mkdir()
    assert list_checkpoints(root) == [p]
    CheckpointManager(root).clean_stale()
    assert sorted(d.name for d in root.iterdir()) == ["latest", "step-00000006"]


def test_resume_latest_refuses_another_jobs_checkpoint(tmp_path):
    from hpcft.errors import ConfigError

    p = CheckpointManager(tmp_path / "checkpoints").save(3, writer(3), STATE)  # job 7's
    assert resolve_resume("latest", tmp_path, job_id=7) == p
    assert resolve_resume("latest", tmp_path, job_id=None) == p
    with pytest.raises(ConfigError, match="holds checkpoints of job 7, not of job 8"):
        resolve_resume("latest", tmp_path, job_id=8)
    assert resolve_resume(str(p), tmp_path, job_id=8) == p  # asked for by its path: allowed


@pytest.mark.parametrize("strategy, interval, step, epoch_end, expected", [
    ("steps", 10, 10, None, True), ("steps", 10, 15, None, False), ("steps", 10, 10, 1, False),
    ("epoch", 1, 8, 1, True), ("epoch", 2, 8, 1, False), ("epoch", 2, 16, 2, True), ("epoch", 2, 5, None, False),
])
def test_should_save_is_the_one_policy(strategy, interval, step, epoch_end, expected):
    assert should_save(strategy, interval, step, epoch_end) is expected


def test_latest_pointer_to_missing_dir_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root)
    a = m.save(1, writer(1), STATE)
    (root / LATEST).write_text("step-00000099\n")
    assert latest_checkpoint(root) == a


@pytest.mark.parametrize("keep, expected", [("off", []), ("all", [1, 2, 3, 4]), ("2", [3, 4]), (1, [4])])
def test_retention(tmp_path, keep, expected):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root, keep=keep)
    for s in (1, 2, 3, 4):
        m.save(s, writer(s), STATE)
    assert [json.loads((d / STATE_FILE).read_text())["step"] for d in list_checkpoints(root)] == expected
    if expected:
        assert latest_checkpoint(root).name == "step-00000004"
    else:
        assert not root.exists()


def test_resave_same_step_replaces(tmp_path):
    m = CheckpointManager(tmp_path / "c")
    m.save(3, writer(3, "a"), STATE)
    p = m.save(3, writer(3, "b"), STATE)
    assert (p / "weights.bin").read_text() == "b3"


def test_rng_and_trainable_roundtrip(tmp_path):
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    net[0].weight.requires_grad_(False)
    save_trainable(net, tmp_path / "t.safetensors")
    save_rng(tmp_path / "rng.pt")
    a = torch.rand(3)
    ref = {n: p.clone() for n, p in net.named_parameters()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    load_trainable(net, tmp_path / "t.safetensors")
    load_rng(tmp_path / "rng.pt")
    assert torch.equal(torch.rand(3), a)
    for n, p in net.named_parameters():
        if n == "0.weight":  # frozen: not in the checkpoint
            assert torch.equal(p, ref[n] + 1)
        else:
            assert torch.equal(p, ref[n])
