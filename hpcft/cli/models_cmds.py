"""Model registry commands: `hpcft publish` and `hpcft models list|show|alias|tag|republish|delete|export`
(hpcft.registry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hpcft.cli.common import app, open_ledger

models = typer.Typer(help="Published models (the model registry): list, show, alias, tag, republish, delete, export.",
                     no_args_is_help=True)
app.add_typer(models, name="models")
REF = typer.Argument(..., help="NAME[@VERSION] (default: the newest published version)")


def _say(msg: str) -> None:
    print(f"[hpcft] {msg}", file=sys.stderr, flush=True)


def _outcome(row, identical: bool = False) -> None:
    """One line for a publish's result; a failure exits 1 with the reason (hpcft.registry.publish.outcome)."""
    from hpcft.registry.publish import outcome

    typer.echo(outcome(row, identical))


@app.command()
def publish(
    job_id: int = typer.Argument(..., help="job id"),
    name: str = typer.Option(..., "--name", help="the asset's name; each publish adds a version (NAME@1, @2 ...)"),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="step-N | latest (default: the final model)"),
    description: Optional[str] = typer.Option(None, "--description", help="free text (default: the job's)"),
    visibility: str = typer.Option("project", "--visibility", help="project (its project's members) | all"),
) -> None:
    """Publish a job's final model, or one of its checkpoints, into the model registry as the next version of NAME
    (copied atomically, with checksums and a model card)."""
    from hpcft.registry import publish as registry

    row, identical = registry.publish_or_same(open_ledger(), job_id, name=name, checkpoint=checkpoint,
                                              description=description, visibility=visibility, say=_say)
    _outcome(row, identical)


def _row_json(row, aliases=()) -> dict:
    return {"name": row.name, "version": row.version, "ref": row.ref, "state": row.state, "reason": row.state_reason,
            "aliases": sorted(aliases), "tags": dict(row.tags or {}),
            "owner": row.owner, "project": row.project, "visibility": row.visibility, "job_id": row.job_id,
            "source": row.source, "kind": row.kind, "method": row.method, "description": row.description,
            "path": row.path, "created_at": row.created_at.isoformat() if row.created_at else None,
            "published_at": row.published_at.isoformat() if row.published_at else None, "meta": row.meta or {}}


@models.command("list")
def list_models(name: Optional[str] = typer.Argument(None, help="only this name"),
                all_: bool = typer.Option(False, "--all", help="also deleted versions"),
                as_json: bool = typer.Option(False, "--json", help="a JSON array")) -> None:
    """The versions you may see (yours, your projects' and everyone's), newest first per name."""
    from hpcft.registry import detail, labels, names

    if name is not None:
        names.check_name(name, "NAME")
    ledger = open_ledger()
    rows = detail.listing(ledger, name, include_deleted=all_)
    if as_json:
        al = labels.alias_list(ledger, name)
        typer.echo(json.dumps([_row_json(r, al.get((r.name, r.version), ())) for r, _ in rows], indent=1, default=str))
        return
    if not rows:
        typer.echo("no model assets" + (f" named {name}" if name else "") + " (publish one: hpcft publish JOB --name NAME)")
        return
    table = [detail.LIST_HEAD] + [cells for _, cells in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(detail.LIST_HEAD))]
    for row in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@models.command("show")
def show(ref: str = REF,
         verify: bool = typer.Option(False, "--verify", help="check every file against SHA256SUMS"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """One version: state (and why), aliases, tags, source job and checkpoint, base, lineage, evaluation, files."""
    from hpcft.registry import detail, labels, names

    ledger = open_ledger()
    row = names.find(ledger, ref, published_only=False)
    if as_json:
        aliases = labels.alias_list(ledger, row.name).get((row.name, row.version), [])
        typer.echo(json.dumps(_row_json(row, aliases), indent=1, default=str))
    else:
        typer.echo(detail.show_text(ledger, row))
    if verify:
        typer.echo(detail.verify_outcome(ledger, row))


@models.command("alias")
def alias(ref: str = typer.Argument(..., help="NAME@VERSION the alias points to (NAME with --delete)"),
          name: str = typer.Argument(..., metavar="ALIAS", help="e.g. champion; then model.path=asset:NAME@champion"),
          delete_: bool = typer.Option(False, "--delete", help="remove the alias")) -> None:
    """Point NAME@ALIAS at a version (created, or moved from the version it named), or remove it (--delete).
    A job submitted with model.path=asset:NAME@ALIAS starts from the version it names at that moment."""
    from hpcft.registry import labels

    ledger = open_ledger()
    if delete_:
        version = labels.delete_alias(ledger, ref, name)
        typer.echo(f"removed alias {ref.partition('@')[0]}@{name} (it named version {version})")
        return
    row, before = labels.set_alias(ledger, ref, name)
    moved = "" if before is None else (" (unchanged)" if before == row.version else f" (moved from {row.name}@{before})")
    typer.echo(f"{row.name}@{name} -> {row.ref}{moved}")


@models.command("tag")
def tag(ref: str = typer.Argument(..., help="NAME@VERSION"),
        pairs: Optional[list[str]] = typer.Argument(None, metavar="KEY=VALUE...", help="tags to set"),
        delete_: Optional[list[str]] = typer.Option(None, "--delete", metavar="KEY", help="a tag to remove")) -> None:
    """Set (KEY=VALUE) or remove (--delete KEY) tags of a version; shown by `models list` and `models show`."""
    from hpcft.registry import labels

    row = labels.set_tags(open_ledger(), ref, pairs or [], delete_ or [])
    typer.echo(f"{row.ref} tags: {labels.tags_text(row.tags) or '-'}")


@models.command("republish")
def republish(ref: str = REF) -> None:
    """Retry a version whose publish failed (same version number), once the cause is fixed."""
    from hpcft.registry import publish as registry

    _outcome(registry.republish(open_ledger(), ref, say=_say))


@models.command("delete")
def delete(ref: str = typer.Argument(..., help="NAME@VERSION")) -> None:
    """Delete a version (its files; the ledger keeps the row as deleted, so the number is never reused). Refused
    while a queued or running job starts from it."""
    from hpcft.registry import publish as registry

    row = registry.delete(open_ledger(), ref)
    typer.echo(f"deleted {row.ref}")


@models.command("export")
def export(ref: str = REF,
           out: Path = typer.Option(..., "-o", "--output", help="a new directory"),
           merge: bool = typer.Option(False, "--merge", help="merge a LoRA into its base: a plain HF model or diffusers pipeline")) -> None:
    """Copy a version out of the registry; with --merge a LoRA asset becomes a plain Hugging Face model that
    transformers and serving stacks load as is (a text-to-image LoRA: a plain diffusers pipeline)."""
    from hpcft.registry import use

    path = use.export(open_ledger(), ref, out, merge=merge, say=_say)
    typer.echo(f"exported {ref}" + (" (merged)" if merge else "") + f" -> {path}")
