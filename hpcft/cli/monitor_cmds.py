"""Watching a job: `hpcft top` (a live view per node and rank), `hpcft monitor` (resource series, and as a PNG beside
the loss) and `hpcft curve` (the method's own series and the loss, by step). They read the run directory
(metrics.jsonl, monitor/ written by hpcft.rundir.monitor inside the job) and never import torch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import typer

from hpcft.cli.common import JOB, app, authorized, duration, refresh_states
from hpcft.errors import HpcftError

TAIL_BYTES = 256 * 1024  # a live view reads the end of each file, not a long run's whole history


def _console():
    """The terminal's width on a terminal; wide enough that no table row wraps in a pipe or a file (scripts read
    the rows)."""
    import sys

    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 250)


def _method(j) -> str:
    return str(((j.config or {}).get("method") or {}).get("name") or j.method or "")


def _interval(j) -> Optional[float]:
    v = ((j.config or {}).get("training") or {}).get("monitor_interval")
    return float(v) if v is not None else None


def _default_png(j, name: str) -> Path:
    """<run>/NAME, or (someone else's job, shared read-only) under your own HPCFT_HOME/plots."""
    import os

    from hpcft import paths

    run_dir = Path(j.output_dir)
    png = run_dir / name if os.access(run_dir, os.W_OK) else paths.home() / "plots" / f"{j.id}-{name}"
    png.parent.mkdir(parents=True, exist_ok=True)
    return png


def _no_samples(j) -> str:
    iv = _interval(j)
    if iv is not None and iv <= 0:
        return f"job {j.id}: monitoring was off (training.monitor_interval=0)"
    from hpcft.states import is_terminal

    if is_terminal(j.state):
        return (f"job {j.id}: no resource samples in {j.output_dir}/monitor/ (state {j.state}: it ended before its "
                "trainer started, or ran on an hpcft without monitoring)")
    return (f"job {j.id}: no resource samples in {j.output_dir}/monitor/ yet (state {j.state}); the trainer writes "
            "the first about a second after it starts")


# ------------------------------------------------------------------------------------------------------ curve

def curve_report(records: List[dict], method: str, title: str, width: int = 60) -> Tuple[str, list]:
    """`hpcft curve`'s text (pure: metrics records in): the headline `TITLE: train LABEL a -> b over N steps` of the
    method's most telling series, a terminal plot of each series, the validation and test values by epoch (a long
    series summarised: first, best, last, sparkline); and the panels for the PNG. HpcftError when nothing was recorded."""
    from hpcft.cli.plot import ascii_plot, series_line
    from hpcft.rundir.metrics_io import curve_panels

    panels = curve_panels(records, method)
    if not panels:
        raise HpcftError(f"{title}: no training metrics recorded yet (metrics.jsonl)")
    lines = []
    for i, (key, label, s) in enumerate(panels):
        xs, ys = s["train"]
        change = f"train {label} {ys[0]:.4f} -> {ys[-1]:.4f}"
        lines.append(f"{title}: {change} over {int(xs[-1])} steps" if i == 0 else f"\n{change}")
        lines.append(ascii_plot(xs, ys, width=width, height=12 if i == 0 else 8, label=label))
        for split in ("validation", "test"):  # a long series: first, best, last and a sparkline
            if split in s:
                lines.append(f"{split} {label} by epoch: " + series_line(*s[split], higher=key != "loss"))
    return "\n".join(lines), [(label, label, s) for _, label, s in panels]


@app.command()
def curve(job_id: int = JOB,
          png: Optional[Path] = typer.Option(None, "--png", help="PNG path (default: <run>/loss.png)"),
          width: int = typer.Option(60, "--width")) -> None:
    """Training curves of a job: its method's series and the loss, in the terminal and as a PNG.

    GRPO: mean reward; DPO: reward margin and accuracy; reward models: pairwise accuracy and margin; every method:
    the training loss with the validation and test losses beside it."""
    from hpcft.cli.plot import save_grid_png
    from hpcft.rundir.metrics_io import read_metrics

    ledger, j, _ = authorized(job_id, "curve")
    if refresh_states([j], ledger):
        j = ledger.get(job_id)
    records = read_metrics(j.output_dir)
    if not any(r.get("type") == "train" for r in records):
        raise HpcftError(f"job {job_id}: no training metrics recorded yet ({j.output_dir}/metrics.jsonl)")
    text, panels = curve_report(records, _method(j), f"job {j.id} {j.name}", width)
    typer.echo(text)
    path = save_grid_png(panels, png or _default_png(j, "loss.png"), f"job {j.id} {j.name} ({_method(j)})")
    typer.echo(f"PNG: {path}")


# ------------------------------------------------------------------------------------------------------ top

def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _age(ts: Optional[float], now: float) -> str:
    if ts is None:
        return "-"
    s = max(0, int(now - ts))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _sstat_lines(rows: List[dict], now: float) -> List[str]:
    """Slurm's latest accounting of the job's trainer steps (the newest sstat query), a line per step."""
    from hpcft.rundir.monitor import main_steps

    if not rows:
        return []
    ts = rows[-1].get("ts")
    out = [f"Slurm sstat ({_age(ts, now)} ago):"]
    for r in main_steps([r for r in rows if r.get("ts") == ts]):
        node = f" on {r['max_rss_node']}" if r.get("max_rss_node") else ""
        out.append(f"  step {r.get('step')}: {r.get('ntasks') or '?'} tasks, cpu time "
                   f"{_fmt(r.get('total_cpu_s'), ',.0f')} s in all, max RSS {_fmt(r.get('max_rss_mb'), ',.0f')} MB"
                   f"{node}, max disk read/written {_fmt(r.get('max_disk_read_mb'), ',.1f')} / "
                   f"{_fmt(r.get('max_disk_write_mb'), ',.1f')} MB per task")
    return out


def top_frame(j, samples: List[dict], sstat: List[dict], records: List[dict], now: float):
    """One frame of `hpcft top` (a rich renderable): the job and its progress, a row per rank with its process and
    its node's resources, Slurm's accounting."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from hpcft.rundir.metrics_io import METHOD_CURVES, progress
    from hpcft.rundir.monitor import latest

    method = _method(j)
    head = f"job {j.id} {j.name} ({method})  {j.state}  {duration(j)}"
    if j.slurm_job_id:
        head += f"  Slurm job {j.slurm_job_id}"
    p = progress(records, method)
    if p:
        extra = " ".join(f"{label} {p[key]:.4g}" for key, label in METHOD_CURVES.get(method, ())
                         if isinstance(p.get(key), (int, float)))
        line = (f"step {p.get('step')}  epoch {_fmt(p.get('epoch'), '.2f')}  loss {_fmt(p.get('loss'), '.4f')}  "
                f"tokens/s {_fmt(p.get('tokens_per_s'), ',.0f')}" + (f"  {extra}" if extra else "")
                + f"  (logged {_age(p.get('time'), now)} ago)")
    else:
        line = "no training step logged yet"
    parts = [Text(head, style="bold"), Text(line)]
    rows = latest(samples)
    if not rows:
        parts.append(Text(_no_samples(j)))
    else:
        node_now: Dict[str, dict] = {}
        for r in samples:
            if "cpu_percent" in r:
                node_now[str(r.get("node"))] = r
        t = Table(box=None, pad_edge=False, header_style="bold")
        for col in ("node", "rank", "cpu %", "rss MB", "node cpu %", "node mem MB", "net rx/tx MB/s",
                    "disk r/w MB/s", "gpu util % / mem MB", "sample"):
            t.add_column(col, justify="left" if col in ("node", "gpu util % / mem MB") else "right")
        for r in sorted(rows, key=lambda r: (str(r.get("node")), r["rank"])):
            n = node_now.get(str(r.get("node")), {})
            gpus = n.get("gpus") or []
            lr = int(r.get("local_rank", 0))
            g = gpus[lr] if lr < len(gpus) else None
            t.add_row(str(r.get("node")), str(r["rank"]), _fmt(r.get("proc_cpu_percent"), ".0f"),
                      _fmt(r.get("proc_rss_mb"), ",.0f"), _fmt(n.get("cpu_percent"), ".0f"),
                      f"{_fmt(n.get('mem_used_mb'), ',.0f')} / {_fmt(n.get('mem_total_mb'), ',.0f')}",
                      f"{_fmt(n.get('net_recv_mb_s'), '.2f')} / {_fmt(n.get('net_sent_mb_s'), '.2f')}",
                      f"{_fmt(n.get('disk_read_mb_s'), '.2f')} / {_fmt(n.get('disk_write_mb_s'), '.2f')}",
                      f"gpu{g['index']} {g['util_percent']:.0f} / {g['mem_used_mb']:,.0f}" if g else "-",
                      _age(r.get("ts"), now) + " ago")
        parts.append(t)
    parts += [Text(x) for x in _sstat_lines(sstat, now)]
    return Group(*parts)


@app.command()
def top(job_id: int = JOB,
        once: bool = typer.Option(False, "--once", help="print one frame and exit (scripts, tests)"),
        interval: float = typer.Option(2.0, "--interval", min=0.2, help="seconds between refreshes")) -> None:
    """A live view of a job per node and rank: CPU, memory, network, disk, GPUs, step, loss, tokens/s.

    One row per rank: the trainer's CPU and memory, its node's CPU, memory, network, disk and GPU; above them the
    current step, loss and tokens/s; below Slurm's accounting (sstat). Refreshes until the job ends (Ctrl-C
    leaves); --once prints one frame."""
    from hpcft.rundir.monitor import read_metrics_tail, read_samples, read_sstat
    from hpcft.states import is_terminal

    ledger, j, _ = authorized(job_id, "top")
    if refresh_states([j], ledger):
        j = ledger.get(job_id)
    con = _console()

    def frame(job):
        out = job.output_dir
        return top_frame(job, read_samples(out, TAIL_BYTES), read_sstat(out, TAIL_BYTES), read_metrics_tail(out),
                         time.time())

    if once or not con.is_terminal:
        con.print(frame(j))
        return
    from rich.live import Live

    try:
        with Live(frame(j), console=con, auto_refresh=False) as live:
            while not is_terminal(j.state):
                time.sleep(interval)
                refresh_states([j], ledger, quiet=True)  # at most one sacct call per 10 s, whoever asks
                j = ledger.get(job_id)
                live.update(frame(j), refresh=True)
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------------------------------------------------ monitor

def _stats(ys: List[float]) -> Tuple[float, float, float]:
    return min(ys), sum(ys) / len(ys), max(ys)


def monitor_panels(samples, records, method, sstat=None):
    """hpcft.rundir.monitor.monitor_panels (the web console draws the same panels)."""
    from hpcft.rundir.monitor import monitor_panels as panels

    return panels(samples, records, method, sstat)


@app.command()
def monitor(job_id: int = JOB,
            png: Optional[Path] = typer.Option(None, "--png", help="also plot the resource series beside the loss "
                                               "curve into this PNG"),
            width: int = typer.Option(30, "--width", help="characters of each sparkline")) -> None:
    """A job's resource series over its run; --png plots them beside the loss curve.

    Every node: CPU, memory, network, disk, GPUs; every rank: the trainer's CPU and memory; each with min / mean /
    max and a sparkline, then Slurm's accounting (sstat). --png: the same series and the loss on one time axis."""
    from rich.table import Table

    from hpcft.cli.plot import save_grid_png, sparkline
    from hpcft.rundir.metrics_io import read_metrics
    from hpcft.rundir.monitor import SERIES, gpu_keys, natural_key, node_samples, read_samples, read_sstat, series

    _, j, _ = authorized(job_id, "monitor")
    samples = read_samples(j.output_dir)
    if not samples:
        raise HpcftError(_no_samples(j))
    con = _console()
    nodes = dict(sorted(node_samples(samples).items(), key=lambda kv: natural_key(kv[0])))
    ranks = sorted({r["rank"] for r in samples})
    span = samples[-1]["ts"] - samples[0]["ts"]
    con.print(f"[bold]job {j.id} {j.name}[/bold] ({_method(j)}, {j.state}): {len(samples)} samples of "
              f"{len(nodes)} node(s) {', '.join(nodes) or '-'} and {len(ranks)} rank(s) over {span:,.0f} s"
              + (f", every {_interval(j):g} s" if _interval(j) else ""))
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("series", "where", "unit", "min", "mean", "max", "over time"):
        t.add_column(col, justify="right" if col in ("min", "mean", "max") else "left")
    keys = list(SERIES) + [(k, f"GPU {k[3:].split('_', 1)[0]} " + ("utilisation" if k.endswith("util_percent")
                                                                     else "memory used"),
                            "%" if k.endswith("util_percent") else "MB", True) for k in gpu_keys(samples)]
    for key, title, unit, node_level in keys:
        for where, (_, ys) in series(samples, key, node_level).items():
            lo, mean, hi = _stats(ys)
            t.add_row(title, where, unit, f"{lo:,.2f}", f"{mean:,.2f}", f"{hi:,.2f}", sparkline(ys, width))
    con.print(t)
    sstat = read_sstat(j.output_dir)
    for line in _sstat_lines(sstat, time.time()):
        con.print(line, highlight=False, soft_wrap=True)
    if png is not None:
        panels = monitor_panels(samples, read_metrics(j.output_dir), _method(j), sstat)
        path = save_grid_png(panels, png, f"job {j.id} {j.name}: resources and loss", xlabel="minutes", ncols=2)
        typer.echo(f"PNG: {path}")
