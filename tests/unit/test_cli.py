"""The CLI as users run it (subprocesses of the installed `hpcft` command)."""

import json
import subprocess
import sys

import pytest

from support import ROOT, hpcft_cli


def run(args, env=None, **kw):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, env=env, timeout=120, **kw)


HEAVY = ("torch", "transformers", "deepspeed", "peft", "trl", "diffusers", "bitsandbytes")


def _modules_imported(argv, env, roots=HEAVY):
    code = ("import sys, runpy; sys.argv = %r\n"
            "try:\n    from hpcft.cli import main; main()\nexcept SystemExit: pass\n"
            "print('MODS=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in %r)))" % (argv, roots))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("MODS=")]
    assert line, out.stderr
    return line[-1][5:]


@pytest.mark.parametrize("argv", [["hpcft", "--help"], ["hpcft", "list"], ["hpcft", "submit", "--help"],
                                  ["hpcft", "sweep"], ["hpcft", "models", "list"]])
def test_light_commands_never_import_torch(argv, hpcft_home, monkeypatch):
    import os

    assert _modules_imported(argv, dict(os.environ)) == ""


def test_list_reads_the_ledger_without_sqlalchemy(hpcft_home, tmp_path):
    """hpcft.ledger.fastread: `hpcft list` on an SQLite ledger at the newest schema imports no SQLAlchemy (~0.5 s);
    a ledger that does not exist yet, or an older one, goes through the full ledger, which creates or upgrades it."""
    import os
    import shutil
    from pathlib import Path

    sql = ("sqlalchemy", "sqlmodel", "alembic")
    env = dict(os.environ)
    assert run(["list"], env=env).returncode == 0  # no ledger yet: created by the full ledger
    assert (hpcft_home / "ledger.db").exists()
    assert _modules_imported(["hpcft", "list"], env, sql) == ""
    assert _modules_imported(["hpcft", "list", "--json", "-r", "gpus=0", "--since", "1d"], env, sql) == ""
    old = tmp_path / "v1.db"  # made before migrations: 3 jobs
    shutil.copy(Path(__file__).resolve().parents[1] / "fixtures" / "ledger-v1.sqlite", old)
    env["HPCFT_DB_URL"] = f"sqlite:///{old}"
    assert "sqlalchemy" in _modules_imported(["hpcft", "list"], env, sql)  # the probe can fail: upgraded here
    assert _modules_imported(["hpcft", "list"], env, sql) == ""  # at head now
    r = run(["list", "--json"], env=env)
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3, r.stderr


def test_the_check_would_catch_torch(hpcft_home):
    # the probe itself must be able to fail: importing the trainer stack is seen
    import os

    code = "import hpcft.train.modeling as m; m.torch_dtype('float32')"
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert out.stdout.strip().endswith("True")


@pytest.mark.parametrize("override,key", [
    ("training.learning_rate=-0.001", "training.learning_rate"),
    ("training.sequence_length=0", "training.sequence_length"),
    ("method=unknownmethod", "method=unknownmethod"),
    ("data.train=/does/not/exist.jsonl", "data.train"),
    ("training.lr_decay_ratio=1.5", "training.lr_decay_ratio"),
    ("training.keep_checkpoints=-2", "training.keep_checkpoints"),
    ("resources.time=soon", "resources.time"),
    ("training.epochs=abc", "training.epochs"),
    ("training.nosuchkey=1", "training.nosuchkey"),
])
def test_bad_values_one_line_nonzero_and_nothing_created(override, key, hpcft_home):
    r = run(["submit", override])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], r.stderr
    assert not (hpcft_home / "runs").exists()
    listed = run(["list", "--json"])
    assert json.loads(listed.stdout) == []


def test_dry_run_prints_config_and_creates_nothing(hpcft_home):
    r = run(["submit", "method=qlora", "method.lora.rank=4", "executor=local", "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert "rank: 4" in r.stdout and "quant_type: nf4" in r.stdout
    assert "would submit one job" in r.stdout and "trainers.causal_lm" in r.stdout
    assert json.loads(run(["list", "--json"]).stdout) == []


def test_unknown_job(hpcft_home):
    r = run(["show", "42"])
    assert r.returncode == 3 and "job 42" in r.stderr


def test_sweep_needs_multirun_flag(hpcft_home):
    r = run(["submit", "method.lora.rank=4,8"])
    assert r.returncode != 0 and "--multirun" in r.stderr


def test_module_entry_point(hpcft_home):
    r = subprocess.run([sys.executable, "-m", "hpcft", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "submit" in r.stdout


@pytest.mark.parametrize("overrides,key", [
    (["model=tiny_sd", "method=t2i_lora", "data=tiny_images", "deepspeed=zero2"], "deepspeed.stage"),
    (["method=dpo", "data=tiny_sft"], "data.format"),
    (["method=pretrain", "data=tiny_pref"], "data.format"),
    (["method=dpo", "data=tiny_pref", "method.beta=0"], "method.beta"),
])
def test_method_specific_checks_run_before_submit(overrides, key, hpcft_home):
    r = run(["submit", "executor=local", *overrides])
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"error: {key}=") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert json.loads(run(["list", "--json"]).stdout) == []


@pytest.mark.parametrize("overrides,first", [
    (["executor=slurm", "method=qlora", "deepspeed=zero2"], "deepspeed.stage=2: method=qlora trains one process without DeepSpeed"),
    (["executor=slurm", "method=qlora", "resources.tasks_per_node=2"], "resources.tasks_per_node=2: method=qlora trains in one process"),
    (["executor=slurm", "method=qlora", "resources.nodes=2"], "resources.nodes=2: method=qlora trains in one process"),
    (["resources.time=00:01:00", "resources.signal_grace=120"],
     "resources.signal_grace=120: must be shorter than resources.time=00:01:00 (60 s); e.g. resources.signal_grace=30"),
    (["resources.on_timeout=later"], "resources.on_timeout=later: unknown action"),
    (["resources.max_requeues=-1"], "resources.max_requeues=-1: must be >= 0"),
])
def test_refused_at_submit_not_in_the_job(overrides, first, hpcft_home):
    """What the trainer used to refuse only after the queue wait (qlora with DeepSpeed or several processes), and
    the time-limit settings, are refused by `hpcft submit --dry-run` already: one line, exit 2, nothing created."""
    r = run(["submit", "--dry-run", *overrides])
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {first}"), r.stderr
    assert r.stdout == "" and not hpcft_home.exists()
