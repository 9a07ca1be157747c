"""Every shipped config composes and validates: every option of every group under conf/, and every experiment
preset (conf/experiment/*.yaml), which must open with the exact command that launches it."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import hpcft.jobs.preflight
import hpcft.config.compose
from hpcft import paths
from hpcft.config.methods import METHOD_SPECS

CONF = paths.conf_dir()
GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("experiment", "pipeline"))
# conf/pipeline/ holds pipeline files, not a config group: tests/unit/test_pipeline.py validates every one
# a model and data set each method can train on (the root defaults are an LM + SFT data)
METHOD_NEEDS = {"pretrain": ["data=tiny_text"], "reward": ["data=tiny_pref"], "dpo": ["data=tiny_pref"], "grpo": ["data=tiny_prompts"],
                "t2i_lora": ["model=tiny_sd", "data=tiny_images"]}
DATA_NEEDS = {"custom": ["data.train=" + paths.asset("data/tiny_sft/train.jsonl")]}
MODEL_NEEDS = {"tiny_sd": ["method=t2i_lora", "data=tiny_images"], "sd15": ["method=t2i_lora", "data=tiny_images"]}
DATA_METHOD = {"tiny_pref": ["method=dpo"], "tiny_prompts": ["method=grpo"],
               "tiny_images": ["model=tiny_sd", "method=t2i_lora"]}


def options():
    for group in GROUPS:
        for f in sorted((CONF / group).glob("*.yaml")):
            yield group, f.stem


def extra_overrides(group, option):
    if group == "method":
        return METHOD_NEEDS.get(hpcft.config.compose.compose([f"method={option}"]).method.name, [])
    if group == "data":
        return DATA_NEEDS.get(option, []) + DATA_METHOD.get(option, [])
    if group == "model":
        return MODEL_NEEDS.get(option, [])
    return []


@pytest.mark.parametrize("group,option", list(options()), ids=lambda x: str(x))
def test_every_group_option_composes_and_validates(group, option):
    overrides = [f"{group}={option}", *extra_overrides(group, option)]
    cfg = hpcft.jobs.preflight.load(overrides)  # the common rules and the method's
    if group == "method":  # the option extends the schema its method's spec names
        assert OmegaConf.get_type(cfg.method) is METHOD_SPECS[cfg.method.name].schema
    assert cfg[group].name  # every option names itself
    text = (CONF / group / f"{option}.yaml").read_text()
    assert text.startswith("#"), f"{group}/{option}.yaml should open with a comment saying what it is"
    assert "Launch: hpcft submit" in text or group in ("deepspeed",), f"{group}/{option}.yaml: no launch line"


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_an_experiment_for_every_method():
    assert len(EXPERIMENTS) >= len(METHOD_SPECS)
    names = {hpcft.jobs.preflight.load([f"+experiment={e}"]).method.name for e in EXPERIMENTS}
    assert names == set(METHOD_SPECS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_validates_and_opens_with_its_command(name):
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the package header only before other comments
    header = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        header.append(line)
    assert any(x.startswith(f"# Launch: hpcft submit +experiment={name}") for x in header), header
    cfg = hpcft.jobs.preflight.load([f"+experiment={name}"])
    assert any(x.startswith("name: ") for x in lines), "an experiment names its jobs"
    assert cfg.resources.name and cfg.data.train and Path(cfg.data.train).is_file()
    # the preset is a starting point: overrides on top still work
    cfg2 = hpcft.jobs.preflight.load([f"+experiment={name}", "training.seed=7"])
    assert cfg2.training.seed == 7 and cfg2.method.name == cfg.method.name


def test_an_unknown_experiment_is_a_config_error():
    from hpcft.errors import ConfigError

    with pytest.raises(ConfigError, match="experiment"):
        hpcft.jobs.preflight.load(["+experiment=nope"])
