"""`render(cfg)`: a standalone sbatch script for a job config, readable and submittable with plain `sbatch`.

The #SBATCH lines come from `hpcft.slurm.sbatch` (the one mapping of resources to options). The resolved config is
embedded as a quoted heredoc (no expansion) and written to the run directory when the job starts; the worker then
runs under srun (`python -m hpcft.jobs.worker register-and-run --config <run_dir>/config.yaml`), registering the job in
the ledger with its SLURM_JOB_ID. Every value that reaches the shell is quoted (shlex) or refused (ConfigError).
The run directory is private (0700, `hpcft.rundir.files.make_run_dir`); the script names the ledger by its URL without any
password (`paths.public_db_url`): the job authenticates with PGPASSWORD or ~/.pgpass on the compute node.
"""

from __future__ import annotations

import re
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from hpcft import paths
from hpcft.rundir.files import make_run_dir
from hpcft.slurm.sbatch import safe_job_name, sbatch_options, to_lines

TEMPLATES = {"single": "single_node.sbatch.j2", "multi": "multi_node.sbatch.j2"}


def _env():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    return Environment(loader=FileSystemLoader(str(paths.templates_dir())), undefined=StrictUndefined,
                       autoescape=False, keep_trailing_newline=True)


def run_dir_for(cfg: DictConfig) -> Path:
    """The config's output_dir, else a fresh directory under the runs root named after the job."""
    if cfg.get("output_dir"):
        return Path(str(cfg.output_dir)).expanduser().resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return (paths.runs_root() / f"{safe_job_name(cfg.name)}-sbatch-{stamp}").resolve()


def _delimiter(text: str) -> str:
    while True:
        d = f"HPCFT_CONFIG_EOF_{secrets.token_hex(4)}"
        if not re.search(rf"^{d}$", text, re.MULTILINE):
            return d


def render(cfg: DictConfig, priority_policy: Optional[str] = None, script_hint: str = "job.sbatch",
           create_dirs: bool = True) -> str:
    """The sbatch script text for this resolved job config. Creates `<run_dir>/logs` (unless create_dirs is
    False): Slurm opens the #SBATCH --output file before the script runs, so its directory must exist."""
    cfg = cfg.copy()
    run_dir = run_dir_for(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(run_dir)
    after = None
    if cfg.get("after"):  # `after` (ledger ids): the parents' Slurm ids, as a submit's --dependency=afterok
        from hpcft.jobs.submit import dependency_of

        after = dependency_of(cfg)
    opts = sbatch_options(cfg.resources, job_name=str(cfg.name), output=str(run_dir / "logs" / "slurm-%j.out"),
                          priority_policy=priority_policy, after=after)
    if create_dirs:
        make_run_dir(run_dir)  # 0700, with logs/
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if not config_yaml.endswith("\n"):
        config_yaml += "\n"
    nodes = int(opts["nodes"] or 1)
    template = _env().get_template(TEMPLATES["multi" if nodes > 1 else "single"])
    text = template.render(
        job_name=opts["job-name"],
        script_hint=shlex.quote(safe_job_name(script_hint)),
        nodes=nodes,
        sbatch_lines=to_lines(opts),
        run_dir=shlex.quote(str(run_dir)),
        db_url=shlex.quote(paths.public_db_url(paths.db_url())),  # never a password: PGPASSWORD / ~/.pgpass
        python=shlex.quote(sys.executable),
        delimiter=_delimiter(config_yaml),
        config_yaml=config_yaml,
    )
    if cfg.model.get("trust_remote_code"):  # who enabled it: the trainer refuses to run that code as anyone else
        from hpcft.train.modeling import REMOTE_CODE_BY, acting_user

        line = f"export HPCFT_DB_URL={shlex.quote(paths.public_db_url(paths.db_url()))}\n"
        text = text.replace(line, line + f"export {REMOTE_CODE_BY}={shlex.quote(acting_user())}\n", 1)
    return text
