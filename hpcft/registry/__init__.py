"""Model assets: publishing a run's final model or a checkpoint under a name and version, and using an asset as the
base of a further run (`model.path=asset:NAME[@V]`), exporting it, merging LoRA adapters.
"""
