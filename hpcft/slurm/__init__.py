"""Slurm: pure sbatch option builder (sbatch.py), pure argv builders and output parsers (commands.py), the mapping
from a job's Slurm environment to torch.distributed's and to the job's identity (env.py)."""
