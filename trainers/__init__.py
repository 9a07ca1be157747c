"""Trainers run inside a job: one readable file per model family."""
