"""Model assets: publishing a run's final model or a checkpoint under a name and version, and using an asset as the
base of a further run (`model.path=asset:NAME[@V]`), exporting it, merging LoRA adapters.

`hpcft publish JOB [--checkpoint step-N|latest] --name NAME` copies a job's final model (or one of its checkpoints,
converted to Hugging Face format) into `$HPCFT_REGISTRY` (default `$HPCFT_HOME/registry`; a shared path on a
cluster) as version N of NAME:

    <registry>/<NAME>/v<N>/   the model files (peft adapter, or full weights), its tokenizer,
                              base/ (a LoRA's base when it lived only in the job's run directory),
                              README.md (model card, Hugging Face front matter), SHA256SUMS (every file)

Everything is written into a hidden staging directory next to it, checksummed, fsynced and renamed into place: a
version directory is complete or absent, never half there. Each version is a ledger row (hpcft.ledger.assets:
publishing -> published | publish_failed, with the reason); `republish` retries a failed one.

An asset holds safetensors, JSON and text only (a pickle such as trl's training_args.bin is left out). Publishing
content identical to a published version of the same name returns that version (no new number, no copy). The card
and `models show` give the evaluation made at the published step, or say there was none.

A job starts from an asset with `model.path=asset:NAME[@VERSION|@ALIAS]` (the newest published version by default;
an alias, set with `hpcft models alias NAME@V ALIAS`, names the version it points to at submit), resolved at submit
into the version's directory, verified (sizes and checksums against SHA256SUMS, cached per version: a damaged version
is refused in one line and marked `corrupt`) and recorded as lineage (`model.asset`, `model.asset_alias`, an `asset`
event); a LoRA asset is merged into its recorded base when the job starts, as with `model.path=job:ID`, and a
text-to-image LoRA into its base pipeline for a further `t2i_lora` run. `hpcft models export NAME[@V] --merge -o DIR`
writes a plain Hugging Face model or diffusers pipeline (adapters merged; no path back into the registry).
`publish.auto=true` publishes the final model when the job succeeds; a failed publish is an event and a
`publish_failed` row, never a change of the job's state. Torch-free at import (conversions and merges import it
inside).

The modules, each importing only those above it in this list:
    files    checksums and the SHA256SUMS manifest (verify), copies (no pickles), permissions, removal
    names    naming and reference rules (versions, aliases), the registry's root, lookups the caller may see
    verify   a version intact? (manifest, sizes, checksums; cached in a stamp), marking it corrupt
    labels   aliases (create, move, delete) and tags
    stage    what a publish copies of a job (final model or checkpoint, converted), described, its base recorded
    card     the recorded metadata and the model card (model_card.md.j2)
    publish  publish (identical content: the existing version), republish, delete, publish.auto
    use      model.path=asset:NAME[@V|@ALIAS], a LoRA asset's base, export (with --merge)
    detail   one version as `models list`/`models show` and the console give it: rows, card, verify's line, actions
"""
