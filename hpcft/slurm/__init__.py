"""Slurm: pure sbatch option builder (sbatch.py), pure argv builders and output parsers (commands.py)."""
