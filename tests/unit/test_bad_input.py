"""The bad-input corpus (tests/bad_input/*.yaml) through the real CLI: every case exits 2 with its one line, and
nothing is created (no ledger row, no run directory, no sbatch call, no script printed)."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from support import hpcft_cli

CORPUS = Path(__file__).resolve().parents[1] / "bad_input"
CASES = sorted(CORPUS.glob("*.yaml"))


def _argv(args, data: Path):
    out = []
    for a in args:
        a = a.replace("{data}", str(data))
        out.append(a.replace("{ff}", "\udcff").encode("utf-8", "surrogateescape") if "{ff}" in a else a)
    return out


def _run(case: Path, tmp: Path, env: dict):
    spec = yaml.safe_load(case.read_text())
    work = tmp / case.stem
    work.mkdir()
    files = spec.get("files") or {}
    data = work / files.get("name", "data.jsonl")  # the data file's name (its extension picks the reader)
    if "data" in files:
        data.write_text(files["data"])
    elif "data_hex" in files:
        data.write_bytes(bytes.fromhex(files["data_hex"]))
    cmd = [*hpcft_cli(), spec["command"], *_argv(spec["args"], data)]
    r = subprocess.run(cmd, capture_output=True, env=env, cwd=work, timeout=120)
    return spec, r


def test_bad_input_corpus(tmp_path, hpcft_home):
    assert len(CASES) >= 40
    marker = tmp_path / "sbatch-called"
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("sbatch", "srun"):  # nothing may reach the scheduler
        (fake / tool).write_text(f"#!/bin/sh\necho \"$0 $*\" >> {marker}\nexit 1\n")
        (fake / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "HPCFT_HOME": str(hpcft_home)}
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda c: (c, *_run(c, tmp_path, env)), CASES))
    failures = []
    for case, spec, r in results:
        err = r.stderr.decode("utf-8", "replace")
        out = r.stdout.decode("utf-8", "replace")
        lines = [x for x in err.splitlines() if x.strip()]
        problems = []
        if r.returncode != 2:
            problems.append(f"exit {r.returncode}")
        if len(lines) != 1:
            problems.append(f"{len(lines)} stderr lines")
        if spec["expect"] not in err:
            problems.append(f"expected {spec['expect']!r}")
        if "Traceback" in err or "#SBATCH" in out or "pwned" in out:
            problems.append("traceback or script output")
        if problems:
            failures.append(f"{case.stem}: {', '.join(problems)}; stderr: {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)
    assert not marker.exists(), marker.read_text()
    assert not Path("/tmp/hpcft-pwned").exists()
    r = subprocess.run([*hpcft_cli(), "list", "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stdout + r.stderr
    runs = hpcft_home / "runs"
    assert not runs.exists() or not any(runs.iterdir()), sorted(runs.iterdir())


@pytest.mark.parametrize("name", ["uid", "gid", "get-user-env", "container", "reboot"])
def test_extra_refuses_privileged_options(name):
    from hpcft.errors import ConfigError
    from hpcft.slurm.sbatch import EXTRA_ALLOWED, sbatch_options

    assert name not in EXTRA_ALLOWED
    with pytest.raises(ConfigError, match=f"resources.extra.{name}: --{name}"):
        sbatch_options({"extra": {name: "0"}})
    assert all(doc for doc in EXTRA_ALLOWED.values())


def test_foreign_trust_remote_code_refused(monkeypatch):
    from types import SimpleNamespace

    from hpcft.ledger.access import AccessDenied
    from hpcft.jobs.control import refuse_foreign_remote_code
    from hpcft.train import modeling

    job = SimpleNamespace(id=7, owner="alice", method="lora", config={"model": {"trust_remote_code": True}})
    refuse_foreign_remote_code(SimpleNamespace(user="alice"), job, "resume")
    with pytest.raises(AccessDenied, match="enabled by alice; only alice may resume"):
        refuse_foreign_remote_code(SimpleNamespace(user="root"), job, "resume")
    monkeypatch.setenv(modeling.REMOTE_CODE_BY, "alice")
    monkeypatch.setattr(modeling, "acting_user", lambda: "root")
    from omegaconf import OmegaConf

    with pytest.raises(Exception, match="enabled by alice"):
        modeling.trust_remote_code(OmegaConf.create({"trust_remote_code": True}))
    assert modeling.trust_remote_code(OmegaConf.create({"trust_remote_code": False})) is False
