import math

import pytest

from hpcft.train.schedule import lr_at, make_scheduler


def test_warmup_then_cosine_to_floor():
    total, base = 100, 1e-3
    lrs = [lr_at(s, total, base, warmup_ratio=0.1, decay_ratio=0.1) for s in range(total)]
    # linear warmup over ceil(0.1*100)=10 steps, reaching base at step 9
    assert lrs[0] == pytest.approx(base / 10)
    assert all(b > a for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert lrs[9] == pytest.approx(base)
    # then monotone decay down to base*ratio at the last step, never below it
    decay = lrs[9:]
    assert all(b <= a + 1e-15 for a, b in zip(decay, decay[1:], strict=False))
    assert lrs[-1] == pytest.approx(base * 0.1)
    assert min(lrs) >= base * 0.1 - 1e-15
    # decay is a cosine from step 10 (first after warmup, = base) to step 99 (= floor)
    assert lrs[10] == pytest.approx(base)
    for s in (30, 54, 80):
        expect = base * 0.1 + 0.9 * base * 0.5 * (1 + math.cos(math.pi * (s - 10) / 89))
        assert lrs[s] == pytest.approx(expect, rel=1e-9)


def test_ratio_one_is_constant_after_warmup():
    lrs = [lr_at(s, 50, 2e-4, warmup_ratio=0.2, decay_ratio=1.0) for s in range(50)]
    assert lrs[0] < 2e-4
    assert all(x == pytest.approx(2e-4) for x in lrs[10:])


def test_no_warmup_starts_at_base_and_ceil_rounding():
    assert lr_at(0, 10, 1.0, 0.0, 0.0) == pytest.approx(1.0)
    assert lr_at(9, 10, 1.0, 0.0, 0.0) == pytest.approx(0.0)
    # ceil(0.05 * 30) = 2 warmup steps
    assert lr_at(0, 30, 1.0, 0.05, 0.5) == pytest.approx(0.5)
    assert lr_at(1, 30, 1.0, 0.05, 0.5) == pytest.approx(1.0)
    assert lr_at(1000, 30, 1.0, 0.05, 0.5) == pytest.approx(0.5)  # past the end stays at the floor


def test_lambda_scheduler_follows_lr_at_and_restores():
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    sch = make_scheduler(opt, 20, 0.1, 0.2)
    seen = []
    for _ in range(10):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert seen == pytest.approx([lr_at(s, 20, 0.5, 0.1, 0.2) for s in range(10)])
    state = sch.state_dict()
    opt2 = torch.optim.SGD([p], lr=0.5)
    sch2 = make_scheduler(opt2, 20, 0.1, 0.2)
    sch2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = sch2.get_last_lr()[0]
    assert opt2.param_groups[0]["lr"] == pytest.approx(lr_at(10, 20, 0.5, 0.1, 0.2))
