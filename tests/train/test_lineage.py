"""A run can start from a previous run's output (here: a LoRA adapter, merged) and the ledger records lineage."""

import json
import subprocess

import pytest

from support import hpcft_cli

pytestmark = pytest.mark.train

FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8", "training.learning_rate=0.01",
        "training.max_steps=6"]


def run(args):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=600)


def test_lora_on_top_of_a_previous_lora_run(hpcft_home):
    r1 = run(["submit", *FAST, "method=lora", "--wait"])
    assert r1.returncode == 0, r1.stdout[-2000:] + r1.stderr
    r2 = run(["submit", *FAST, "method=lora", "model.path=job:1", "--wait"])
    assert r2.returncode == 0, r2.stdout[-2000:] + r2.stderr
    jobs = {j["id"]: j for j in json.loads(run(["list", "--json"]).stdout)}
    assert jobs[2]["parent_id"] == 1 and jobs[1]["parent_id"] is None
    assert "parent job" in run(["show", "2"]).stdout

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    first, second = jobs[1]["output_dir"], jobs[2]["output_dir"]
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(f"{first}/base"),
                                         f"{first}/final").merge_and_unload()
    merged = AutoModelForCausalLM.from_pretrained(f"{second}/base")  # the second run's base = first run merged
    original = AutoModelForCausalLM.from_pretrained(f"{first}/base")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    assert torch.allclose(merged(ids).logits, expected(ids).logits, atol=1e-5)
    assert not torch.allclose(merged(ids).logits, original(ids).logits, atol=1e-5)
    adapter2 = json.loads(open(f"{second}/final/adapter_config.json").read())
    assert adapter2["base_model_name_or_path"].endswith("/base")


def test_lineage_to_a_job_without_final_model_is_refused(hpcft_home):
    r = run(["submit", *FAST, "model.path=job:7"])
    assert r.returncode == 3 and "job 7" in r.stderr


def test_lineage_needs_a_numeric_id(hpcft_home):
    r = run(["submit", *FAST, "model.path=job:abc"])
    assert r.returncode == 2 and "job:ID" in r.stderr
