"""hpcft.train.optim: the AdamW of hpcft's own loops is fused, keeps its weight-decay groups, and a checkpoint of
the plain (foreach) AdamW of earlier versions resumes with the plain update, step for step."""

import torch

from hpcft.train.optim import adamw, param_groups


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    m[2].weight.requires_grad_(False)
    return m


def _step(model, opt, seed):
    g = torch.Generator().manual_seed(seed)
    loss = model(torch.randn(5, 8, generator=g)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_groups_and_fused_on_cpu():
    m = _model()
    groups = param_groups(m, 0.1)
    assert [len(g["params"]) for g in groups] == [1, 4]  # decay: the first weight; no decay: biases and the norm
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p is not m[2].weight for g in groups for p in g["params"])  # frozen weights are left out
    opt = adamw(groups, lr=1e-2)
    assert opt.defaults["fused"] is True


def test_fused_update_equals_the_plain_one():
    a, b = _model(), _model()
    oa = adamw(param_groups(a, 0.1), lr=1e-2)
    ob = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2)
    for s in range(5):
        _step(a, oa, s)
        _step(b, ob, s)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_a_plain_adamw_checkpoint_resumes_with_the_plain_update():
    ref, cut = _model(), _model()
    oref = torch.optim.AdamW(param_groups(ref, 0.1), lr=1e-2)
    ocut = torch.optim.AdamW(param_groups(cut, 0.1), lr=1e-2)
    for s in range(3):
        _step(ref, oref, s)
        _step(cut, ocut, s)
    saved = ocut.state_dict()
    resumed = adamw(param_groups(cut, 0.1), lr=1e-2)
    resumed.load_state_dict(saved)
    assert not resumed.param_groups[0]["fused"]  # the checkpoint's options win: the same update as before
    for s in range(3, 6):
        _step(ref, oref, s)
        _step(cut, resumed, s)
    for pa, pb in zip(ref.parameters(), cut.parameters(), strict=True):
        assert torch.equal(pa, pb)
