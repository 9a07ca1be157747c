import pytest

from hpcft.errors import ConfigError
from hpcft.config.sweep import expand, is_sweep


def test_cartesian_product_in_order():
    pts = expand(["method.lora.rank=4,8", "training.learning_rate=1e-4,3e-4", "training.epochs=2"])
    assert len(pts) == 4
    assert pts[0] == ["method.lora.rank=4", "training.learning_rate=0.0001", "training.epochs=2"]
    assert pts[-1] == ["method.lora.rank=8", "training.learning_rate=0.0003", "training.epochs=2"]


def test_no_sweep_is_one_point():
    assert expand(["method=lora"]) == [["method=lora"]]
    assert not is_sweep(["method=lora"]) and is_sweep(["method=lora,qlora"])


def test_range_sweep():
    assert [p[0] for p in expand(["training.seed=range(1,4)"])] == ["training.seed=1", "training.seed=2", "training.seed=3"]


def test_bad_override():
    with pytest.raises(ConfigError):
        expand(["method=lora,"])
