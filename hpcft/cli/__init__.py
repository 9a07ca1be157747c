"""The `hpcft` command line. Commands import what they need inside their bodies, so that `hpcft --help` and
`hpcft list` never import torch (a test proves it)."""

from __future__ import annotations

import os
import sys

import typer

from hpcft.errors import HpcftError

app = typer.Typer(
    name="hpcft",
    help="LLM fine-tuning as a first-class Slurm citizen: submit, track and manage training jobs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from hpcft.cli import jobs as _jobs  # noqa: E402,F401  (registers the commands)
from hpcft.cli import slurm_cmds as _slurm_cmds  # noqa: E402,F401
from hpcft.cli import team_cmds as _team_cmds  # noqa: E402,F401
from hpcft.cli import sweep_cmds as _sweep_cmds  # noqa: E402,F401
from hpcft.cli import models_cmds as _models_cmds  # noqa: E402,F401
from hpcft.cli import monitor_cmds as _monitor_cmds  # noqa: E402,F401


def main() -> None:
    try:
        app()
    except HpcftError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # a bug or an unexpected failure: one line, the traceback on request
        if os.environ.get("HPCFT_DEBUG"):
            raise
        print(f"error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(set HPCFT_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
