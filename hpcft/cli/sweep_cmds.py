"""`hpcft sweep [ID]`: the points of a sweep side by side (state, final train loss, best validation figure; for a
Hydra app's sweep the values its task returned), best first (`--by KEY`, `--max/--min`); without an id, the latest
sweeps. Reads the ledger and the run directories only (hpcft.ledger.sweeps)."""

from __future__ import annotations

import json
from typing import List, Optional, Sequence

import typer

from hpcft.cli.common import app

_COLORS = {"success": "green", "error": "red", "running": "cyan", "expired": "yellow", "stopped": "magenta"}


def _num(x: Optional[float], general: bool = False) -> str:
    """A loss to 4 decimals; a returned value (`general`) in up to 6 significant digits (30, 0.123457, 1.5e-07)."""
    return "-" if x is None else f"{x:.6g}" if general else f"{x:.4f}"


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
    by: Optional[str] = typer.Option(None, "--by", help="rank by this figure: a value a Hydra app's task returned "
                                                        "(default: its first), or for hpcft's own sweeps val | "
                                                        "train_loss"),
    higher: Optional[bool] = typer.Option(None, "--max/--min", help="highest or lowest first (default: highest for "
                                                                    "accuracies, scores, rewards; lowest otherwise)"),
    as_json: bool = typer.Option(False, "--json", help="the comparison (or the list) as JSON"),
    limit: int = typer.Option(20, "--limit", help="without an id: how many sweeps to list"),
) -> None:
    """Compare a sweep's points side by side, best first (`hpcft submit -m ...` makes a sweep; so does a Hydra app
    run with `-m ... hydra/launcher=hpcft`, whose points show the values their task returned)."""
    from hpcft.ledger import sweeps as sl
    from hpcft.ledger.store import Ledger

    ledger = Ledger()
    if sweep_id is None:
        _list(ledger, limit, as_json)
        return
    cmp = sl.compare(ledger, sl.resolve(ledger, sweep_id), by=by, higher=higher)
    if as_json:
        typer.echo(json.dumps(cmp, indent=1))
        return
    order = "highest" if cmp["higher_is_better"] else "lowest"
    typer.echo(f"sweep {cmp['sweep']}: {cmp['name']}, {cmp['points']} points, best first by {cmp['metric']} "
               f"({order})")
    head, table, fig = _returned_table(cmp) if cmp["kind"] == "returned" else _figures_table(cmp)
    typer.echo(_table(head, table, state_col=1 + len(cmp["keys"])))
    if cmp["hidden"]:
        typer.echo(f"({cmp['hidden']} more points you may not see)")
    top = cmp["rows"][0] if cmp["rows"] else None
    if top is not None and fig(top) is not None:
        typer.echo(f"best: job {top['id']} {top['name']} ({cmp['metric']} {_num(fig(top), cmp['returned'])}, "
                   f"state {top['state']})")


def _figures_table(cmp: dict):
    """hpcft's own sweeps: step, final train loss, best validation figure and its step."""
    keys = cmp["keys"]
    val = cmp["metric"].startswith("validation")
    head = ["JOB", *keys, "STATE", "STEP", "TRAIN LOSS", f"BEST VAL {cmp['metric'].split()[-1].upper()}" if val
            else "BEST VAL", "AT STEP"]
    table = [[str(r["id"]), *[str(r["values"].get(k, "-")) for k in keys], r["state"],
              "-" if r["step"] is None else str(r["step"]), _num(r["train_loss"]), _num(r["best"]),
              "-" if r["best_step"] is None else str(r["best_step"])] for r in cmp["rows"]]
    return head, table, (lambda r: r["best"] if val else r["train_loss"])


def _returned_table(cmp: dict):
    """A Hydra app's sweep: the values its task returned, the ranking one first."""
    keys, by = cmp["keys"], cmp["metric"]
    returned = [by, *[k for k in cmp["returned"] if k != by]]
    head = ["JOB", *keys, "STATE", *returned]
    table = [[str(r["id"]), *[str(r["values"].get(k, "-")) for k in keys], r["state"],
              *[_num(r["results"].get(k), True) for k in returned]] for r in cmp["rows"]]
    return head, table, (lambda r: r["results"].get(by))


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
