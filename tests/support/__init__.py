"""What the test folders share: where things are, the `hpcft` command of this venv, and (in the modules beside this
one) the databases of the ledger tests, the Slurm cluster fixture, the real Unix users of the team tests and the
tiny training runs."""

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TESTS = ROOT / "tests"  # and its data: bad_input/, fixtures/, hydra_app/
VENV_BIN = Path(sys.executable).parent


def hpcft_cli():
    """argv prefix for the installed `hpcft` command of this venv."""
    exe = VENV_BIN / "hpcft"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcft"]


def wait_for(pred, what, timeout=180.0, every=0.5, before=None):
    """pred()'s first truthy value, polled every `every` seconds (`before()` runs ahead of each poll, e.g. an
    `hpcft sync`); AssertionError naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if before is not None:
            before()
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
