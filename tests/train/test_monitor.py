"""Monitoring (hpcft.rundir.monitor, `hpcft top`, `hpcft monitor`, `hpcft curve`): the sampler with real psutil counters,
Slurm's sstat parser on captured output, the method's curves, and a real local GRPO job watched while it runs.
The 2-node Slurm job's monitoring is checked in tests/cluster/test_slurm_e2e.py (test_two_node_deepspeed_zero2_lora)."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from support import hpcft_cli

# sstat --allsteps --noheader --parsable2 --format=<SSTAT_FIELDS> -j 744 (2-node job of the local cluster, running)
SSTAT_744 = ("744.batch|1|00:00:00|12196K|12196K|n1|32936|1643|cpu=00:00:00,energy=0,fs/disk=32936,mem=12196K,pages=0,"
             "vmem=287784K\n744.0|2|00:00:00|91706K|91712K|n2|1697626|1707|cpu=00:00:00,energy=0,fs/disk=3395252,"
             "mem=183412K,pages=0,vmem=189392K\n")


def run(args, timeout=120):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _by_rank(run_dir):
    from hpcft.rundir.monitor import read_samples

    samples = read_samples(run_dir)
    return {r: [s for s in samples if s["rank"] == r] for r in (0, 1)}


def test_sampler_writes_process_and_node_series(tmp_path):
    from hpcft.rundir.monitor import Sampler, latest, node_samples, read_samples, series

    node = Sampler(tmp_path, rank=0, local_rank=0, interval=0.1, node="n1").start()
    other = Sampler(tmp_path, rank=1, local_rank=1, interval=0.1, node="n1").start()
    block = bytearray(64 * 2**20)  # resident memory the trainer sampler must see
    t_end = time.time() + 30  # busy (the process's cpu time grows) until both ranks have 3 samples: a loaded
    while time.time() < t_end:  # machine may give the sampler threads little time
        sum(range(10_000))
        if all(len(v) >= 3 for v in _by_rank(tmp_path).values()):
            break
    node.stop()
    other.stop()
    assert len(block) == 64 * 2**20
    samples = read_samples(tmp_path)
    by_rank = {r: [s for s in samples if s["rank"] == r] for r in (0, 1)}
    assert all(len(v) >= 3 for v in by_rank.values()), samples
    assert [s.get("final") for s in by_rank[0]][-1] is True and sum(bool(s.get("final")) for s in by_rank[0]) == 1
    # every rank: its process; local rank 0 alone: the node (one writer per node)
    assert all(s["proc_rss_mb"] > 64 and s["proc_cpu_percent"] >= 0 for s in samples)
    assert max(s["proc_cpu_percent"] for s in by_rank[0]) > 5
    first = by_rank[0][0]
    for key in ("cpu_percent", "mem_used_mb", "mem_total_mb", "net_recv_mb_s", "net_sent_mb_s"):
        assert first[key] >= 0, key
    assert 0 < first["mem_used_mb"] < first["mem_total_mb"]
    assert not any("cpu_percent" in s for s in by_rank[1])
    assert "gpus" not in first  # no GPU here (nvidia-ml-py finds no driver): no GPU series, no failure
    assert list(node_samples(samples)) == ["n1"]
    assert list(series(samples, "proc_rss_mb", False)) == ["rank 0", "rank 1"]
    assert [s["rank"] for s in latest(samples)] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "monitor").iterdir()) == ["rank-0.jsonl", "rank-1.jsonl"]


def test_monitoring_off_and_a_torn_line(tmp_path):
    from omegaconf import OmegaConf

    from hpcft.rundir.monitor import read_samples, start_for
    from hpcft.train.context import RunContext

    cfg = OmegaConf.create({"training": {"monitor_interval": 0}})
    assert start_for(cfg, RunContext(output_dir=tmp_path)) is None
    assert not (tmp_path / "monitor").exists()
    (tmp_path / "monitor").mkdir()
    (tmp_path / "monitor" / "rank-0.jsonl").write_text('{"ts": 1, "rank": 0, "node": "a"}\n{"ts": 2, "ra')
    assert [r["ts"] for r in read_samples(tmp_path)] == [1]


def test_sstat_argv_and_parser_on_captured_output():
    from hpcft.rundir.monitor import main_steps
    from hpcft.slurm import commands as C

    assert C.sstat_argv("744") == ["sstat", "--allsteps", "--noheader", "--parsable2",
                                   "--format=JobID,NTasks,AveCPU,AveRSS,MaxRSS,MaxRSSNode,MaxDiskRead,MaxDiskWrite,"
                                   "TRESUsageInTot", "-j", "744"]
    batch, step = C.parse_sstat(SSTAT_744)
    assert step["step"] == "744.0" and step["ntasks"] == 2 and step["max_rss_node"] == "n2"
    assert step["max_rss_mb"] == round(91712 / 1024, 3) and step["total_mem_mb"] == round(183412 / 1024, 3)
    assert step["max_disk_read_mb"] == round(1697626 / 2**20, 3) and step["ave_cpu_s"] == 0.0
    assert main_steps([batch, step]) == [step] and main_steps([batch]) == [batch]
    assert C.parse_sstat("") == []  # no running step: sstat prints nothing on stdout
    assert C.parse_cpu_time_s("01:02.500") == 62.5 and C.parse_cpu_time_s("1-00:00:01") == 86401
    assert C.parse_size_mb("1.5G") == 1536 and C.parse_size_mb("") is None


def test_curve_panels_follow_the_method():
    from hpcft.cli.monitor_cmds import curve_report
    from hpcft.rundir.metrics_io import curve_panels, progress

    recs = [{"type": "train", "step": s, "loss": 0.0, "reward": r, "num_tokens": 100.0 * s, "time": 10.0 + s}
            for s, r in ((1, 0.1), (2, 0.5), (3, 0.96))]
    recs.append({"type": "eval", "split": "validation", "step": 3, "epoch": 1, "loss": 0.01, "reward": 0.9})
    assert [label for _, label, _ in curve_panels(recs, "grpo")] == ["mean reward", "loss"]
    assert [label for _, label, _ in curve_panels(recs, "lora")] == ["loss"]
    text, panels = curve_report(recs, "grpo", "job 7 g")
    assert text.splitlines()[0] == "job 7 g: train mean reward 0.1000 -> 0.9600 over 3 steps"
    assert "validation mean reward by epoch: 0.9000" in text and "validation loss by epoch: 0.0100" in text
    p = progress(recs, "grpo")
    assert p["step"] == 3 and p["reward"] == 0.96 and p["tokens_per_s"] == 100.0  # from num_tokens over time
    from hpcft.errors import HpcftError

    with pytest.raises(HpcftError, match="no training metrics"):
        curve_report([{"type": "data"}], "dpo", "job 8 d")


def test_monitor_without_samples_is_one_line(hpcft_home, tmp_path):
    from hpcft.ledger.store import Ledger

    j = Ledger().create_job(name="never-ran", executor="local", output_dir=str(tmp_path), method="lora")
    r = run(["monitor", str(j.id)])
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"job {j.id}: no resource samples in {tmp_path}/monitor/" in r.stderr
    top = run(["top", str(j.id), "--once"])
    assert top.returncode == 0 and "no training step logged yet" in top.stdout and "no resource samples" in top.stdout


@pytest.mark.train
@pytest.mark.slow
def test_local_grpo_job_top_while_running_then_monitor_and_curve(hpcft_home, tmp_path):
    """A real local GRPO job: `top --once` while it trains shows its node and rank with CPU, memory and network;
    afterwards `monitor` has non-empty series and a PNG, `curve` headlines the mean reward, not the loss."""
    r = run(["submit", "executor=local", "+experiment=grpo_tiny", "training.max_steps=4", "data.validation=null",
             "data.test=null", "training.monitor_interval=0.5", "name=watched"])
    assert r.returncode == 0, r.stderr
    from hpcft.ledger.store import Ledger

    ledger = Ledger()  # polled in this process: a CLI call per poll would take the CPU the job needs
    (job,) = ledger.search()
    out, jid = Path(job.output_dir), str(job.id)
    deadline = time.time() + 300
    live = None
    while time.time() < deadline:
        state = ledger.get(job.id).state
        samples = out / "monitor" / "rank-0.jsonl"
        if state == "running" and samples.exists() and len(samples.read_text().splitlines()) >= 2:
            live = run(["top", jid, "--once"])
            break
        assert state in ("queued", "running"), state
        time.sleep(0.5)
    assert live is not None and live.returncode == 0, live
    head, row = live.stdout.splitlines()[0], next(x for x in live.stdout.splitlines()[3:] if x.split()[1:2] == ["0"])
    assert head.startswith(f"job {jid} watched (grpo)  running"), live.stdout
    cells = row.replace(" / ", " ").split()  # node rank cpu rss node-cpu mem-used mem-total net-rx net-tx ...
    assert len(cells) >= 9, live.stdout
    node = cells[0]
    cpu, rss, node_cpu, mem_used, mem_total, net_rx, net_tx = (float(c.replace(",", "")) for c in cells[2:9])
    assert rss > 50 and 0 < mem_used < mem_total and cpu >= 0 and node_cpu >= 0, live.stdout
    assert net_rx >= 0 and net_tx >= 0 and "net rx/tx MB/s" in live.stdout

    while time.time() < deadline and ledger.get(job.id).state in ("queued", "running"):
        time.sleep(0.5)
    assert ledger.get(job.id).state == "success", (out / "logs" / "job.log").read_text()[-3000:]
    png = tmp_path / "m.png"
    mon = run(["monitor", jid, "--png", str(png)])
    assert mon.returncode == 0, mon.stderr
    for title in ("node CPU", "node memory used", "network received", "network sent", "trainer resident memory"):
        line = next((x for x in mon.stdout.splitlines() if x.startswith(title + " ")), None)
        assert line and line.split()[len(title.split())] in (node, "rank"), (title, mon.stdout)
    assert png.stat().st_size > 10_000
    done = run(["top", jid, "--once"])
    assert "step 4 " in done.stdout and "mean reward" in done.stdout, done.stdout

    cur = run(["curve", jid])
    assert cur.returncode == 0, cur.stderr
    rewards = [r["reward"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
               if r.get("type") == "train"]
    assert cur.stdout.splitlines()[0] == (f"job {jid} watched: train mean reward {rewards[0]:.4f} -> "
                                          f"{rewards[-1]:.4f} over 4 steps"), cur.stdout
    assert "\ntrain loss " in cur.stdout and (out / "loss.png").stat().st_size > 10_000
