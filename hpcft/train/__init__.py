"""Training components shared by the trainers in `trainers/` (data, schedule, checkpoints, metrics).

Importing this package is cheap; the modules that need torch import it themselves.
"""
