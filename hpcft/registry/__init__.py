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

A job starts from an asset with `model.path=asset:NAME[@VERSION]` (the newest published version by default),
resolved at submit into the version's directory and recorded as lineage (`model.asset`, an `asset` event); a LoRA
asset is merged into its recorded base when the job starts, as with `model.path=job:ID`. `hpcft models export
NAME[@V] --merge -o DIR` writes a plain Hugging Face model (adapters merged). `publish.auto=true` publishes the final
model when the job succeeds; a failed publish is an event and a `publish_failed` row, never a change of the job's
state. Torch-free at import (conversions and merges import it inside).

The modules, each importing only those above it in this list:
    files    checksums and the SHA256SUMS manifest (verify), copies, permissions, removal
    names    naming and reference rules, the registry's root, lookups of the versions the caller may see
    stage    what a publish copies of a job (final model or checkpoint, converted), described, its base recorded
    card     the recorded metadata and the model card (model_card.md.j2)
    publish  publish, republish, delete, publish.auto
    use      model.path=asset:NAME[@V], a LoRA asset's base, export (with --merge)
"""
