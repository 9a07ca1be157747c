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
    resolve_resume,
    save_rng,
    save_trainable,
    write_json,
)


def writer(step, payload="w"):
    def write(d):
        (d / "weights.bin").write_text(f"{payload}{step}")
        write_json(d / STATE_FILE, {"step": step})
    return write


class Crash(Exception):
    pass


def test_save_publishes_latest(tmp_path):
    m = CheckpointManager(tmp_path / "checkpoints", keep="all")
    p = m.save(10, writer(10))
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
    good = m.save(5, writer(5))

    def crashing(d):
        (d / "weights.bin").write_text("half")
        raise Crash()

    with pytest.raises(Crash):
        m.save(10, crashing)
    # the half-written dir exists only as .tmp; latest still names the complete step 5
    assert (root / "step-00000010.tmp").is_dir()
    assert not (root / "step-00000010").exists()
    assert latest_checkpoint(root) == good
    assert (root / LATEST).read_text().strip() == good.name
    assert list_checkpoints(root) == [good]
    # a crash after the rename but before `latest` moved: latest still points at a complete checkpoint
    # the next save cleans the stale tmp dir
    p = CheckpointManager(root, keep="all").save(15, writer(15))
    assert not list(root.glob("*.tmp"))
    assert latest_checkpoint(root) == p


def test_missing_state_file_is_not_published(tmp_path):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root)
    with pytest.raises(RuntimeError, match=STATE_FILE):
        m.save(1, lambda d: (d / "x").write_text("x"))
    assert latest_checkpoint(root) is None


def test_latest_pointer_to_missing_dir_falls_back(tmp_path):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root)
    a = m.save(1, writer(1))
    (root / LATEST).write_text("step-00000099\n")
    assert latest_checkpoint(root) == a


@pytest.mark.parametrize("keep, expected", [("off", []), ("all", [1, 2, 3, 4]), ("2", [3, 4]), (1, [4])])
def test_retention(tmp_path, keep, expected):
    root = tmp_path / "checkpoints"
    m = CheckpointManager(root, keep=keep)
    for s in (1, 2, 3, 4):
        m.save(s, writer(s))
    assert [json.loads((d / STATE_FILE).read_text())["step"] for d in list_checkpoints(root)] == expected
    if expected:
        assert latest_checkpoint(root).name == "step-00000004"
    else:
        assert not root.exists()


def test_resave_same_step_replaces(tmp_path):
    m = CheckpointManager(tmp_path / "c")
    m.save(3, writer(3, "a"))
    p = m.save(3, writer(3, "b"))
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
