"""`hpcft sweep [ID]`: the points of a sweep side by side (state, final train loss, best validation figure), best
first; without an id, the latest sweeps. Reads the ledger and the run directories only (hpcft.ledger.sweeps)."""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

import typer

from hpcft.cli.common import app

_COLORS = {"success": "green", "error": "red", "running": "cyan", "expired": "yellow", "stopped": "magenta"}


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.4f}"


def _table(head: Sequence[str], rows: List[Sequence[str]], state_col: Optional[int] = None) -> str:
    """A plain aligned table (like `hpcft list`), the state column coloured."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells, style) -> str:
        return "  ".join(style(i, c.ljust(w) if i < len(cells) - 1 else c)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head, lambda i, c: typer.style(c, bold=True))]
    out += [line(r, lambda i, c: typer.style(c, fg=_COLORS.get(c.strip(), "white")) if i == state_col else c)
            for r in rows]
    return "\n".join(out)


@app.command()
def sweep(
    sweep_id: Optional[int] = typer.Argument(None, help="a sweep: its id (the first job's) or any of its points' "
                                                        "job ids; none: list the latest sweeps"),
    as_json: bool = typer.Option(False, "--json", help="the comparison (or the list) as JSON"),
    limit: int = typer.Option(20, "--limit", help="without an id: how many sweeps to list"),
) -> None:
    """Compare a sweep's points side by side, best first (`hpcft submit -m ...` makes a sweep)."""
    from hpcft.ledger import sweeps as sl
    from hpcft.ledger.store import Ledger

    ledger = Ledger()
    if sweep_id is None:
        _list(ledger, limit, as_json)
        return
    cmp = sl.compare(ledger, sl.resolve(ledger, sweep_id))
    if as_json:
        typer.echo(json.dumps(cmp, indent=1))
        return
    rows = cmp["rows"]
    keys = cmp["keys"]
    order = "highest" if cmp["higher_is_better"] else "lowest"
    typer.echo(f"sweep {cmp['sweep']}: {cmp['name']}, {cmp['points']} points, best first by {cmp['metric']} "
               f"({order})")
    val = cmp["metric"].startswith("validation")
    head = ["JOB", *keys, "STATE", "STEP", "TRAIN LOSS", f"BEST VAL {cmp['metric'].split()[-1].upper()}" if val
            else "BEST VAL", "AT STEP"]
    table = [[str(r["id"]), *[str(r["values"].get(k, "-")) for k in keys], r["state"],
              "-" if r["step"] is None else str(r["step"]), _num(r["train_loss"]), _num(r["best"]),
              "-" if r["best_step"] is None else str(r["best_step"])] for r in rows]
    typer.echo(_table(head, table, state_col=1 + len(keys)))
    if cmp["hidden"]:
        typer.echo(f"({cmp['hidden']} more points you may not see)")
    top = rows[0] if rows else None
    fig = None if top is None else (top["best"] if val else top["train_loss"])
    if top is not None and fig is not None:
        typer.echo(f"best: job {top['id']} {top['name']} ({cmp['metric']} {fig:.4f}, state {top['state']})")


def _list(ledger, limit: int, as_json: bool) -> None:
    from hpcft.ledger import sweeps as sl

    found = sl.recent(ledger, limit)
    jobs = {j.id: j for j in ledger.search(ids=[i for s in found for i in s["jobs"]])} if found else {}
    for s in found:
        counts: dict = {}
        for i in s["jobs"]:
            if i in jobs:
                counts[jobs[i].state] = counts.get(jobs[i].state, 0) + 1
        s["states"] = counts
    if as_json:
        typer.echo(json.dumps(found, indent=1))
        return
    if not found:
        typer.echo("no sweeps yet (`hpcft submit -m key=a,b ...` submits one)")
        return
    rows = [[str(s["sweep"]), s["name"], str(s["points"]), ", ".join(f"{n} {st}" for st, n in s["states"].items())]
            for s in found]
    typer.echo(_table(["SWEEP", "NAME", "POINTS", "STATES"], rows))
