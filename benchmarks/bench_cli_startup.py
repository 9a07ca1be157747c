"""Light commands never import the training stack. What does that buy at the prompt?

Side by side in one run: `hpcft list` and `hpcft --help` (as shipped) against the same list command with the
training stack imported first (what an eager package import would cost). Prints medians and the ratio.

    .venv/bin/python benchmarks/bench_cli_startup.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

LIST = "import sys; sys.argv=['hpcft','list']\nfrom hpcft.cli import main\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
EAGER = "import torch, transformers, peft\n" + LIST


def timed(code: str, env: dict, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main(repeats: int = 5) -> None:
    env = dict(os.environ, HPCFT_HOME=tempfile.mkdtemp())
    help_code = LIST.replace("'list'", "'--help'")
    timed(EAGER, env, 1)  # warm the file cache for both
    lazy = timed(LIST, env, repeats)
    helpt = timed(help_code, env, repeats)
    eager = timed(EAGER, env, repeats)
    print(f"hpcft --help (lazy imports):        {helpt * 1000:7.0f} ms")
    print(f"hpcft list   (lazy imports):        {lazy * 1000:7.0f} ms")
    print(f"hpcft list   with torch+transformers+peft imported: {eager * 1000:7.0f} ms")
    print(f"ratio eager / lazy:                 {eager / lazy:7.1f}x")


if __name__ == "__main__":
    main()
