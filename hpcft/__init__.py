"""hpcft: LLM fine-tuning as a first-class Slurm citizen.

Kept import-light on purpose: `hpcft --help` and `hpcft list` must never import torch.
"""

__version__ = "0.1.0"
