"""Hydra launcher plugin `hydra/launcher=hpcft`: a user's own Hydra app swept as ONE Slurm job array through
hpcft, returning at once; the points are ordinary hpcft jobs (`hpcft list/show/logs/sync/stop`). See
hpcft.jobs.hydra_launch. Hydra imports every module under hydra_plugins at start-up: keep them light."""
