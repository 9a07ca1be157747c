"""What the ledger records of a job config (its row's fields). A leaf module: the submit path and the worker
(which registers jobs started by rendered sbatch scripts) both use it without importing each other."""

from __future__ import annotations

from typing import Any, Dict

from omegaconf import DictConfig, OmegaConf


def resource_spec(r: Any) -> str:
    """A one-line, searchable summary of a resources section."""
    parts = [f"nodes={r.nodes}", f"gpus={r.gpus_per_node}", f"tasks={r.tasks_per_node}", f"cpus={r.cpus_per_task}",
             f"mem={r.mem or '-'}", f"time={r.time}", f"partition={r.partition or '-'}", f"qos={r.qos or '-'}",
             f"priority={r.priority}"]
    for k in ("account", "nodelist", "reservation", "constraint"):
        if r.get(k):
            parts.append(f"{k}={r[k]}")
    return " ".join(parts)


def ledger_fields(cfg: DictConfig) -> Dict[str, Any]:
    return dict(
        name=str(cfg.name),
        description=str(cfg.description or ""),
        project=str(cfg.project),
        access=str(cfg.get("access") or "none"),
        method=str(cfg.method.name),
        config=OmegaConf.to_container(cfg, resolve=True),
        resources=OmegaConf.to_container(cfg.resources, resolve=True),
        resource_spec=resource_spec(cfg.resources),
        parent_id=cfg.model.get("parent_job"),
    )
