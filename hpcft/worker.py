"""Kept where rendered sbatch scripts and queued jobs of hpcft 0.1 look for it: `python -m hpcft.worker ...` and
the pickled `hpcft.worker.run_in_allocation` of a job submitted before the upgrade. The worker is
`hpcft.jobs.worker`; this module only forwards to it."""

import sys

from hpcft.jobs.worker import main, run_in_allocation  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
