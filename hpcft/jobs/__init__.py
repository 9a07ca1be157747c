"""A job's lifecycle: the checks before the queue (preflight), submission, clone, control (stop, resume, retry),
the executors that put jobs onto compute, the worker that runs in the allocation, rendered sbatch scripts and the
Hydra-app launcher (submit side and node side).
"""
