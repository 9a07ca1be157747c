"""The job's configuration: the schema of every config group, each method's rules, composing `conf/` with a user's
overrides, sweep naming and the memory estimate. Imports nothing above `hpcft.slurm` and the base modules; no torch.
"""
