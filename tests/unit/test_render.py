"""`hpcft.jobs.render`: standalone sbatch scripts that hostile values cannot break out of."""

import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hpcft.config import compose
from hpcft.errors import ConfigError
from hpcft.jobs.render import render

SBATCH_LINE = re.compile(r"^#SBATCH --[a-z][a-z-]*(=[^\s'\"`$;]+)?$")


def hostile_cfg(tmp_path: Path, resources: str = "cpu_small"):
    cfg = compose.compose([f"resources={resources}"])
    marker = tmp_path / "pwned"
    cfg.name = f"x'\"$(touch {marker})`touch {marker}`\n#SBATCH --qos=high"
    cfg.description = f"a\nEOF\nHPCFT_CONFIG_EOF\n$(touch {marker})\n'\"\\"
    cfg.output_dir = str(tmp_path / "run")
    return cfg, marker


def _stub_bin(tmp_path: Path) -> Path:
    """srun / scontrol stand-ins that record their argv instead of running anything."""
    b = tmp_path / "bin"
    b.mkdir()
    for name in ("srun", "scontrol"):
        (b / name).write_text(f'#!/bin/bash\necho "{name} $*" >> "{tmp_path}/calls"\necho n1\n')
        (b / name).chmod(0o755)
    return b


@pytest.mark.parametrize("resources,template_word", [("cpu_small", "single node"), ("multinode_4x8", "4 nodes")])
def test_hostile_values_cannot_break_out(tmp_path, hpcft_home, resources, template_word):
    cfg, marker = hostile_cfg(tmp_path, resources)
    text = render(cfg)
    assert template_word in text.splitlines()[1]
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    sbatch = [x for x in text.splitlines() if x.startswith("#SBATCH")]
    assert sbatch and all(SBATCH_LINE.match(x) for x in sbatch), sbatch
    assert not any("qos=high" in x for x in sbatch)  # the name's injected line stayed inside the name
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    lines = text.splitlines()
    first_cmd = next(i for i, x in enumerate(lines) if x and not x.startswith("#"))
    assert all(i < first_cmd for i, x in enumerate(lines) if x.startswith("#SBATCH"))

    # run the script with stand-ins for srun/scontrol: it writes the config verbatim and touches nothing
    env = dict(os.environ, PATH=f"{_stub_bin(tmp_path)}:{os.environ['PATH']}", SLURM_JOB_ID="77",
               SLURM_JOB_NODELIST="n1", SLURM_JOB_NUM_NODES="1", SLURM_NTASKS="1")
    p = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert not marker.exists()
    written = OmegaConf.load(tmp_path / "run" / "config.yaml")
    assert written.name == cfg.name and written.description == cfg.description
    assert written.output_dir == str((tmp_path / "run").resolve())
    calls = (tmp_path / "calls").read_text()
    assert "-m hpcft.jobs.worker register-and-run --config" in calls and str(tmp_path / "run" / "config.yaml") in calls


def test_hostile_resource_value_is_refused(tmp_path, hpcft_home):
    cfg, _ = hostile_cfg(tmp_path)
    cfg.resources.partition = "debug\n#SBATCH --qos=high"
    with pytest.raises(ConfigError, match="resources.partition"):
        render(cfg)
    cfg, _ = hostile_cfg(tmp_path)
    cfg.output_dir = str(tmp_path / "$(id)")
    with pytest.raises(ConfigError, match="output"):
        render(cfg)


def test_render_uses_the_builder_lines(tmp_path, hpcft_home):
    cfg = compose.compose(["resources=cpu_small", "resources.time=90", "resources.priority=high"])
    cfg.output_dir = str(tmp_path / "r")
    text = render(cfg, priority_policy="qos")
    assert "#SBATCH --time=01:30:00" in text and "#SBATCH --qos=high" in text
    assert f"#SBATCH --output={tmp_path / 'r'}/logs/slurm-%j.out" in text
