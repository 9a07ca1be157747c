"""Where a job's secrets live: `.secrets.json` in its run directory, readable by its owner alone (mode 0600, no ACL
entry even when the run directory is shared), and nowhere else.

The values the schema marks secret (hpcft.config.secrets: `notify.urls`, whose apprise URLs may carry passwords and
tokens) are taken out of the config before it is stored: the ledger's `config` column and the run directory's
`config.yaml` hold them masked (`['***']`: there are receivers, not who), so neither a project member who may read
the job (the ledger through `psql`, the shared run directory) nor a database administrator's backup learns them. The
owner's processes put them back where they are needed (`restore`): the end-of-job notification (the worker, the
owner's `hpcft sync`), the owner's `show --config` and clone.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Dict, Tuple

SECRETS_FILE = ".secrets.json"


def _get(data: Dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: Dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node: Any = data
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node[last] = value


def split(config: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the config with its secrets masked, {dotted key: secret value}) of a plain (resolved) job config."""
    from hpcft.config.secrets import masked, secret_keys

    found = {k: copy.deepcopy(v) for k in secret_keys() if (v := _get(config, k)) not in (None, "", [], {})}
    return masked(config), found


def write(run_dir: os.PathLike, secret: Dict[str, Any]) -> None:
    """Keep `secret` in the run directory for its owner alone (none: no file)."""
    path = Path(run_dir) / SECRETS_FILE
    if not secret:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(SECRETS_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secret, f)
    os.chmod(tmp, 0o600)  # whatever a default ACL of the directory gave it
    tmp.replace(path)
    make_private(path)


def make_private(path: os.PathLike) -> None:
    """No ACL entry and mode 0600 on the secrets file (after the run directory was shared recursively)."""
    import shutil
    import subprocess

    p = Path(path)
    if not p.exists():
        return
    if shutil.which("setfacl"):
        subprocess.run(["setfacl", "-b", str(p)], capture_output=True, check=False)
    os.chmod(p, 0o600)


def read(run_dir: os.PathLike) -> Dict[str, Any]:
    """The job's secrets ({} when there are none, or this user may not read them)."""
    try:
        data = json.loads((Path(run_dir) / SECRETS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def restore(config: Dict[str, Any], run_dir: Any) -> Dict[str, Any]:
    """A copy of a stored (masked) config with its secrets put back from the run directory, where this user may
    read them; otherwise the copy stays masked."""
    out = copy.deepcopy(dict(config or {}))
    if run_dir:
        for key, value in read(run_dir).items():
            _set(out, key, value)
    return out


def still_masked(config: Dict[str, Any]) -> bool:
    """Whether a config still holds masked secret values (`restore` could not read them: not the owner)."""
    from hpcft.config.secrets import MASK, secret_keys

    for key in secret_keys():
        value = _get(config, key)
        if value == MASK or (isinstance(value, list) and MASK in value):
            return True
    return False
