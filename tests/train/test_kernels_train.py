"""training.kernels=liger's loss path in the causal-LM loop: with Liger's fused cross-entropy the loop hands the
labels to the model and takes its loss. On the CPU (no Triton) the model's own loss stands in for Liger's: the
same mean over the same shifted label tokens as hpcft's token_loss, padded and packed batches alike."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from support.train_helpers import ctx_for, job_config, torch_threads  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(autouse=True)
def few_threads():
    with torch_threads(2):
        yield


@pytest.mark.parametrize("packing", [False, True])
def test_the_models_own_loss_equals_token_loss_on_the_loops_batches(tmp_path, monkeypatch, packing):
    from trainers.causal_lm import CausalLMRecipe

    cfg = job_config(tmp_path, "+experiment=lora_tiny", "training.sequence_length=64", "training.batch_size=4",
                     "training.max_steps=3", f"training.packing={str(packing).lower()}")
    r = CausalLMRecipe(cfg, ctx_for(tmp_path))
    r.setup()
    assert r.fused_ce is False  # CPU: auto resolves to none
    r.engine.eval()  # no dropout: both paths see the same forward
    monkeypatch.setattr(r.engine, "backward", lambda loss, n: None)
    monkeypatch.setattr(r.engine, "optimizer_step", lambda: None)
    seen = []
    real_call = r.engine.__class__.__call__

    def spy(engine, **batch):
        seen.append(sorted(batch))
        return real_call(engine, **batch)

    monkeypatch.setattr(r.engine.__class__, "__call__", spy)
    micro = [[0, 1, 2, 3], [4, 5, 6, 7]]
    plain, n1 = r.train_step(micro)
    r.fused_ce = True
    fused, n2 = r.train_step(micro)
    assert n1 == n2 > 0
    assert float(fused) == pytest.approx(float(plain), rel=1e-5)
    assert "labels" not in seen[0] and "labels" in seen[-1]  # the fused path hands the labels to the model
    assert ("position_ids" in seen[-1]) is packing
