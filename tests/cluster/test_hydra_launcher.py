"""A user's own Hydra app (tests/hydra_app) swept with `-m ... hydra/launcher=hpcft` on the real local Slurm cluster:
one job array, one ledger row per point, the launch returns before the points end, and the hpcft commands work on
the points (sync, list, show, logs, stop, resume)."""

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from support import ROOT, hpcft_cli

APP = ROOT / "tests" / "hydra_app" / "app.py"


def app(args, cwd, timeout=180):
    return subprocess.run([sys.executable, str(APP), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def hpcft(args, timeout=120):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def jobs():
    """The ledger's rows, read in this process (cheaper than `hpcft list --json` in a loop on 2 CPUs)."""
    from hpcft.ledger.jobjson import job_dict
    from hpcft.ledger.store import Ledger

    return {j.id: job_dict(j) for j in Ledger().search()}


def wait_ended(ids, timeout=300):
    """Until the points end: their workers record success; a stop shows in Slurm's accounting (sync)."""
    from hpcft.jobs.executors.slurm import SlurmExecutor
    from hpcft.ledger.store import Ledger

    deadline = time.time() + timeout
    while time.time() < deadline:
        ledger = Ledger()
        SlurmExecutor().sync(ledger, ledger.live_jobs())
        js = jobs()
        if all(js[i]["state"] in ("success", "error", "stopped", "expired") for i in ids):
            return js
        time.sleep(2)
    raise AssertionError(f"points did not end: {[js[i] for i in ids]}")


@pytest.mark.slurm
@pytest.mark.slow
def test_hydra_app_sweep_is_one_array_and_returns_at_once(slurm_cluster, hpcft_home, tmp_path):
    sweep = tmp_path / "multirun"
    r = app(["-m", "x=1,2,3", "sleep_s=8", "hydra/launcher=hpcft", "hydra/launcher/resources=cpu_small",
             f"hydra.sweep.dir={sweep}", "hydra.launcher.name=hydra-sweep", "hydra.launcher.resources.time=00:05:00"],
            cwd=tmp_path)
    returned = datetime.now(timezone.utc)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    js = jobs()
    assert len(js) == 3
    assert all(j["state"] in ("queued", "running") for j in js.values()), js  # it did not wait for the points
    assert len({j["array_job_id"] for j in js.values()}) == 1 and next(iter(js.values()))["array_job_id"]
    assert sorted(j["array_task_id"] for j in js.values()) == [0, 1, 2]
    assert {(j["method"], j["executor"]) for j in js.values()} == {("hydra", "slurm")}
    # hpcft's resources preset, then the command line's override
    assert {(j["resources"]["name"], j["resources"]["time"]) for j in js.values()} == {("cpu_small", "00:05:00")}
    by_x = {int(Path(j["output_dir"]).name) + 1: j["id"] for j in js.values()}  # hydra.sweep.subdir = job num
    assert {Path(j["output_dir"]).parent for j in js.values()} == {sweep}
    assert {x: js[by_x[x]]["name"] for x in by_x} == {x: f"hydra-sweep x={x}" for x in (1, 2, 3)}  # its values
    assert f"hpcft job {by_x[1]} (Slurm " in r.stdout

    stop = hpcft(["stop", str(by_x[3])])
    assert stop.returncode == 0, stop.stderr
    wait_ended(list(by_x.values()))
    assert hpcft(["sync"]).returncode == 0
    table = hpcft(["list"]).stdout.splitlines()
    listed = {int(line.split()[0]): next(w for w in line.split() if w in ("success", "stopped", "error", "running",
                                                                       "queued")) for line in table[1:]}
    assert listed == {by_x[1]: "success", by_x[2]: "success", by_x[3]: "stopped"}, listed
    compared = hpcft(["sweep", str(by_x[2])])  # any point's id names its sweep
    rows = [line.split() for line in compared.stdout.splitlines()[2:5]]
    assert compared.returncode == 0 and "3 points, best first by value (lowest)" in compared.stdout, compared.stdout
    # the task's return value, best (lowest) first; the stopped point returned nothing
    assert rows == [[str(by_x[1]), "1", "success", "10"], [str(by_x[2]), "2", "success", "20"],
                    [str(by_x[3]), "3", "stopped", "-"]], compared.stdout
    ended = jobs()
    assert [ended[by_x[x]]["state"] for x in (1, 2, 3)] == ["success", "success", "stopped"], ended
    for x in (1, 2):
        j = ended[by_x[x]]
        assert datetime.fromisoformat(j["finished_at"]) > returned  # the points ended after the launch returned
        out = Path(j["output_dir"])
        assert (out / "result.txt").read_text() == f"{x * 10}\n"
        assert (out / ".hydra" / "overrides.yaml").exists()  # Hydra's run_job ran in the point's directory
    from hpcft.jobs.hydra_point import load_result

    assert load_result(ended[by_x[2]]["output_dir"]) == 20  # the task's return value
    logs = hpcft(["logs", str(by_x[1])])
    assert logs.returncode == 0 and "x=1 -> 10" in logs.stdout, logs.stdout + logs.stderr
    show = hpcft(["show", str(by_x[2])])
    assert show.returncode == 0 and "hydra" in show.stdout and "x=2" in show.stdout

    # the stopped point runs again as a new attempt of the same job
    again = hpcft(["resume", str(by_x[3])])
    assert again.returncode == 0 and "runs again" in again.stdout, again.stdout + again.stderr
    j = wait_ended([by_x[3]])[by_x[3]]
    assert j["state"] == "success" and j["attempt"] == 2, j
    assert (Path(j["output_dir"]) / "result.txt").read_text() == "30\n"


def test_bad_launcher_setting_is_one_line_and_creates_nothing(hpcft_home, tmp_path):
    sweep = tmp_path / "multirun"
    r = app(["-m", "x=1,2", "hydra/launcher=hpcft", f"hydra.sweep.dir={sweep}",
             "+hydra.launcher.resources.extra.uid=0"], cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.resources.extra.uid: --uid runs the "
                                                        "job as another user"), r.stderr
    assert "Traceback" not in r.stderr
    assert jobs() == {}
    assert not (sweep / "0").exists() and not (sweep / "1").exists()
