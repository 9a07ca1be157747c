"""`hydra/launcher=hpcft`: the launcher's config (registered in Hydra's ConfigStore) and the Launcher itself, a thin
shell around `hpcft.jobs.hydra_launch.launch`. Imported by Hydra's plugin scan in every Hydra app: light imports only.
No `from __future__ import annotations`: the scan runs the module outside sys.modules, where dataclasses cannot
resolve string annotations."""

import sys
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.plugins.launcher import Launcher
from omegaconf import OmegaConf

from hpcft import paths
from hpcft.config.schema import ResourcesConfig


@dataclass
class HpcftLauncherConf:
    """`hydra.launcher.*`. `resources` is hpcft's resources section (hpcft/config/schema.py ResourcesConfig): nodes,
    gpus_per_node, tasks_per_node, cpus_per_task, mem, time, partition, account, qos, priority, extra, ...; hpcft's
    presets (conf/resources/*.yaml) are the group `hydra/launcher/resources` (`hydra/launcher/resources=gpu_1x`)."""

    # _self_ first: a chosen preset overrides the schema's defaults; values set by the app or on the command line
    # override the preset
    defaults: List[Any] = field(default_factory=lambda: ["_self_", {"resources": None}])
    _target_: str = "hydra_plugins.hpcft_launcher.hpcft_launcher.HpcftLauncher"
    name: str = "${hydra.job.name}"  # the ledger name of every point (and of the Slurm array)
    description: str = ""  # default: the point's overrides
    project: str = "default"  # default: resources.account, else your one project
    access: str = "none"  # what the other members of the project may do: none | ro | rw
    resources: ResourcesConfig = field(default_factory=lambda: ResourcesConfig(name="hydra"))


ConfigStore.instance().store(group="hydra/launcher", name="hpcft", node=HpcftLauncherConf, provider="hpcft")
for _preset in sorted((paths.conf_dir() / "resources").glob("*.yaml")):  # the same presets as `hpcft submit`
    _node = OmegaConf.load(_preset)
    _node.pop("defaults", None)  # their schema is the launcher's `resources` field
    ConfigStore.instance().store(group="hydra/launcher/resources", name=_preset.stem, node=_node, provider="hpcft")


class HpcftLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = params  # read again from the full config in setup (interpolations such as ${hydra.job.name})
        self.config: Optional[Any] = None
        self.hydra_context: Optional[Any] = None
        self.task_function: Optional[Any] = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
        from hpcft.errors import HpcftError
        from hpcft.jobs.hydra_launch import launch

        try:
            return launch(self.hydra_context, self.task_function, self.config, job_overrides, initial_job_idx)
        except HpcftError as e:  # one line and hpcft's exit code, not Hydra's traceback hint
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(e.exit_code) from None
