"""`pip install .` (a real wheel, not only editable) must carry conf/, sbatch_templates/, trainers/ and assets."""

import os
import subprocess
import sys
import zipfile

from support import ROOT


def test_wheel_carries_configs_and_finds_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("hpcft-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hpcft/_conf/config.yaml" in names
    assert "hpcft/_conf/method/lora.yaml" in names
    assert any(n.startswith("hpcft/_sbatch_templates/") for n in names)
    assert "trainers/causal_lm.py" in names
    assert "hpcft/assets/data/tiny_sft/train.jsonl" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("from hpcft import paths; from hpcft.jobs import preflight; c = preflight.load(['method=lora']); "
            "print(paths.conf_dir()); print(c.data.train)")
    env = dict(os.environ, PYTHONPATH=str(target))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    conf_dir, train = out.stdout.split()
    assert conf_dir.startswith(str(target)) and conf_dir.endswith("hpcft/_conf")
    assert train.startswith(str(target))

    # the Hydra launcher plugin (hydra/launcher=hpcft) in the namespace package hydra_plugins, found by Hydra's scan
    assert "hydra_plugins/hpcft_launcher/hpcft_launcher.py" in names and "hydra_plugins/__init__.py" not in names
    code = ("from hydra.core.plugins import Plugins; from hydra.plugins.launcher import Launcher; "
            "import hydra_plugins.hpcft_launcher as m; print(m.__file__); "
            "print(','.join(c.__name__ for c in Plugins.instance().discover(Launcher)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, launchers = out.stdout.split()
    assert where.startswith(str(target)) and "HpcftLauncher" in launchers.split(",")
