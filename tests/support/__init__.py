"""What the test folders share: where things are, the `hpcft` command of this venv, and (in the modules beside this
one) the databases of the ledger tests, the Slurm cluster fixture, the real Unix users of the team tests and the
tiny training runs."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
TESTS = ROOT / "tests"  # and its data: bad_input/, fixtures/, hydra_app/
VENV_BIN = Path(sys.executable).parent


def hpcft_cli():
    """argv prefix for the installed `hpcft` command of this venv."""
    exe = VENV_BIN / "hpcft"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hpcft"]
