"""The `hpcft` command line. Commands import what they need inside their bodies, so that `hpcft --help` and
`hpcft list` never import torch (a test proves it)."""

from __future__ import annotations

import os
import sys

# each module registers its commands on `app`, in this order (the order of `hpcft --help`)
from hpcft.cli import jobs  # noqa: F401  (registers the commands)
from hpcft.cli import slurm_cmds  # noqa: F401
from hpcft.cli import team_cmds  # noqa: F401
from hpcft.cli import sweep_cmds  # noqa: F401
from hpcft.cli import models_cmds  # noqa: F401
from hpcft.cli import monitor_cmds  # noqa: F401
from hpcft.cli import web_cmds  # noqa: F401
from hpcft.cli import pipeline_cmds  # noqa: F401
from hpcft.cli.common import app
from hpcft.errors import HpcftError

__all__ = ["app", "main"]


def main() -> None:
    from hpcft.train import quiet

    if sys.argv[1:2] == ["--verbose"]:  # `hpcft --verbose CMD`: every third-party message, as HPCFT_VERBOSE=1
        del sys.argv[1]
        os.environ[quiet.VERBOSE_ENV] = "1"
    quiet.install()
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
        try:
            from hpcft.ledger.store import unreachable

            down = unreachable(e)
        except Exception:  # noqa: BLE001  (the message below is the fallback)
            down = None
        if down is not None:  # the database server down or not answering: exit code 6, try again later
            print(f"error: {down}", file=sys.stderr)
            sys.exit(down.exit_code)
        print(f"error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(set HPCFT_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(1)
