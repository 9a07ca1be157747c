"""A job's run directory: its layout and permissions, the metrics it writes and the resource sampler that runs
beside the trainer. Knows files, not the ledger.
"""
