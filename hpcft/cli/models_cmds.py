"""Model registry commands: `hpcft publish` and `hpcft models list|show|republish|delete|export` (hpcft.registry)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from hpcft.cli.common import app, open_ledger
from hpcft.errors import HpcftError

models = typer.Typer(help="Published models (the model registry): list, show, republish, delete, export.",
                     no_args_is_help=True)
app.add_typer(models, name="models")
REF = typer.Argument(..., help="NAME[@VERSION] (default: the newest published version)")


def _say(msg: str) -> None:
    print(f"[hpcft] {msg}", file=sys.stderr, flush=True)


def _when(dt) -> str:
    return dt.astimezone().strftime("%Y-%m-%d %H:%M") if dt else "-"


def _outcome(row) -> None:
    """One line for a publish's result; a failure exits 1 with the reason."""
    if row.state != "published":
        raise HpcftError(f"model asset {row.ref}: publish_failed: {row.state_reason} (the version stays recorded; "
                         f"`hpcft models republish {row.ref}` retries it)")
    meta = row.meta or {}
    typer.echo(f"published {row.ref} ({meta.get('kind')}, {meta.get('files')} files) -> {row.path}")


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

    _outcome(registry.publish(open_ledger(), job_id, name=name, checkpoint=checkpoint, description=description,
                              visibility=visibility, say=_say))


def _row_json(row) -> dict:
    return {"name": row.name, "version": row.version, "ref": row.ref, "state": row.state, "reason": row.state_reason,
            "owner": row.owner, "project": row.project, "visibility": row.visibility, "job_id": row.job_id,
            "source": row.source, "kind": row.kind, "method": row.method, "description": row.description,
            "path": row.path, "created_at": row.created_at.isoformat() if row.created_at else None,
            "published_at": row.published_at.isoformat() if row.published_at else None, "meta": row.meta or {}}


@models.command("list")
def list_models(name: Optional[str] = typer.Argument(None, help="only this name"),
                all_: bool = typer.Option(False, "--all", help="also deleted versions"),
                as_json: bool = typer.Option(False, "--json", help="a JSON array")) -> None:
    """The versions you may see (yours, your projects' and everyone's), newest first per name."""
    from hpcft.registry import names

    if name is not None:
        names.check_name(name, "NAME")
    rows = names.visible(open_ledger(), name, include_deleted=all_)
    if as_json:
        typer.echo(json.dumps([_row_json(r) for r in rows], indent=1, default=str))
        return
    if not rows:
        typer.echo("no model assets" + (f" named {name}" if name else "") + " (publish one: hpcft publish JOB --name NAME)")
        return
    head = ("ASSET", "STATE", "KIND", "JOB", "SOURCE", "OWNER", "PROJECT", "VISIBILITY", "CREATED")
    table = [head] + [(r.ref, r.state, r.kind or "-", str(r.job_id or "-"), r.source, r.owner, r.project, r.visibility,
                       _when(r.created_at)) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@models.command("show")
def show(ref: str = REF,
         verify: bool = typer.Option(False, "--verify", help="check every file against SHA256SUMS"),
         as_json: bool = typer.Option(False, "--json")) -> None:
    """One version: state (and why), source job and checkpoint, base, lineage, evaluation, files."""
    from hpcft.registry import files, names, use

    ledger = open_ledger()
    row = names.find(ledger, ref, published_only=False)
    if as_json:
        typer.echo(json.dumps(_row_json(row), indent=1, default=str))
    else:
        meta = row.meta or {}
        lines = [f"model asset {row.ref}: {row.state}" + (f" ({row.state_reason})" if row.state_reason else ""),
                 f"  kind        {row.kind or '-'} ({meta.get('library', '-')}, {meta.get('task', '-')})",
                 f"  from        job {row.job_id}, {row.source}" + (f" (step {meta['step']})" if meta.get("step") else ""),
                 f"  owner       {row.owner}, project {row.project}, visibility {row.visibility}",
                 f"  published   {_when(row.published_at)}",
                 f"  path        {row.path or '-'}"]
        if row.kind == "lora":
            lines.append(f"  base        {use.base_of(row, ledger)}")
        if row.description:
            lines.append(f"  description {row.description}")
        if meta.get("files") is not None:
            lines.append(f"  files       {meta['files']} ({files.size_text(meta.get('size_bytes') or 0)}), "
                         f"{files.MANIFEST} sha256 {str(meta.get('manifest_sha256'))[:16]}...")
        for split, vals in sorted((meta.get("eval") or {}).items()):
            lines.append(f"  eval        {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(vals.items())))
        lines += [f"  lineage     {x}" for x in meta.get("lineage") or []]
        typer.echo("\n".join(lines))
    if verify:
        if row.state != "published":
            raise HpcftError(f"model asset {row.ref} is {row.state}: nothing to verify")
        problems = files.verify(Path(row.path))
        if problems:
            raise HpcftError(f"model asset {row.ref}: {len(problems)} file(s) do not match {files.MANIFEST}: "
                             + "; ".join(problems[:5]))
        typer.echo(f"verified: every file of {row.ref} matches {files.MANIFEST}")


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
           merge: bool = typer.Option(False, "--merge", help="merge a LoRA adapter into its base: a plain HF model")) -> None:
    """Copy a version out of the registry; with --merge a LoRA asset becomes a plain Hugging Face model that
    transformers and serving stacks load as is."""
    from hpcft.registry import use

    path = use.export(open_ledger(), ref, out, merge=merge, say=_say)
    typer.echo(f"exported {ref}" + (" (merged)" if merge else "") + f" -> {path}")
