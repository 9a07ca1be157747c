"""Text-to-image assets through the real CLI (SQLite ledger, tiny diffusers model built from configs, CPU): a t2i LoRA
run is published (its base included and named relative to the version), a further t2i_lora run starts from
`asset:NAME` (trained on the asset's LoRA fused into its base), and `models export --merge` writes a plain diffusers
pipeline that loads with from_pretrained from wherever it is moved and renders what the asset renders.

The tests of this module share one HPCFT_HOME and run in file order.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli

pytestmark = [pytest.mark.train, pytest.mark.slow]
T2I = ["+experiment=t2i_lora_tiny", "executor=local", "training.epochs=1", "method.num_sample_images=0"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("t2i-registry") / "hpcft-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HPCFT_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("HPCFT_DB_URL", "HPCFT_RUNS", "HPCFT_REGISTRY"):
            mp.delenv(var, raising=False)
        yield home


def run(args, timeout=900):
    return subprocess.run(hpcft_cli() + list(args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def ok(r):
    assert r.returncode == 0, (r.returncode, r.stdout[-3000:], r.stderr[-3000:])
    return r


def job(job_id):
    from hpcft.ledger.store import Ledger

    return Ledger().get(job_id)


def texts(d: Path) -> str:
    """Every file a loader reads under d (JSON, tokenizer files), concatenated (the card's provenance may name the
    run the model came from)."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(d.rglob("*"))
                     if p.is_file() and p.suffix in (".json", ".txt"))


def render(pipe, seed=0):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    img = pipe("a red circle on a white background", num_inference_steps=4, height=32, width=32, generator=g)
    return np.asarray(img.images[0]).astype(int)


@pytest.fixture(scope="module")
def published(home):
    """Job 1: a t2i LoRA on the tiny model built from configs, published as t2i-tiny@1."""
    ok(run(["submit", *T2I, "name=t2i-base", "--wait"]))
    assert job(1).state == "success"
    r = ok(run(["publish", "1", "--name", "t2i-tiny"]))
    assert r.stdout.startswith("published t2i-tiny@1 (diffusers_lora")
    return home / "registry" / "t2i-tiny" / "v1"


def test_the_version_is_relocatable_and_its_card_says_how_to_use_it(home, published):
    assert json.loads((published / "hpcft_base.json").read_text())["base"] == "base"
    assert (published / "base" / "model_index.json").is_file()
    assert str(home) not in texts(published)  # no absolute path: the registry can move
    assert str(home / "registry") not in (published / "README.md").read_text()
    card = (published / "README.md").read_text()
    use = card.split("## Use it")[1].split("## Training")[0]
    assert "method=t2i_lora model.path=asset:t2i-tiny@1" in use and "--merge" in use
    assert "StableDiffusionPipeline.from_pretrained" in use and "method=lora " not in use


def test_a_t2i_lora_run_starts_from_a_t2i_asset(home, published, tmp_path):
    import torch
    from safetensors.torch import load_file

    import trainers.text_to_image as t2i

    refused = run(["submit", "executor=local", "model.path=asset:t2i-tiny", "--dry-run"])  # a language-model method
    assert refused.returncode == 2 and "holds LoRA weights for a diffusion pipeline" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    ok(run(["submit", *T2I, "model.path=asset:t2i-tiny", "name=t2i-further", "--wait"]))
    j = job(2)
    assert j.state == "success" and j.config["model"]["asset"] == "t2i-tiny@1"
    run2 = Path(j.output_dir)
    # it trained on the asset's LoRA fused into the asset's base: its base/ is that merge, not the original base
    t2i.merge_lora_pipeline(str(published), tmp_path / "merged")
    unet = "unet/diffusion_pytorch_model.safetensors"
    mine, want, orig = (load_file(d / unet) for d in (run2 / "base", tmp_path / "merged", published / "base"))
    assert all(torch.equal(mine[k], want[k]) for k in want)
    assert any(not torch.equal(want[k], orig[k]) for k in want)
    assert (run2 / "final" / t2i.LORA_FILE).is_file()
    ok(run(["publish", "2", "--name", "t2i-further"]))
    from hpcft.ledger import assets as db
    from hpcft.ledger.store import Ledger

    row = db.search(Ledger(), name="t2i-further")[0]
    assert row.meta["lineage"][1] == "job 2 started from model asset t2i-tiny@1"


def test_a_merged_export_is_a_plain_diffusers_pipeline_that_renders(home, published, tmp_path):
    from diffusers import StableDiffusionPipeline

    import trainers.text_to_image as t2i

    out = tmp_path / "export"
    ok(run(["models", "export", "t2i-tiny", "--merge", "-o", str(out)]))
    moved = tmp_path / "elsewhere" / "t2i"
    moved.parent.mkdir()
    os.rename(out, moved)  # relocatable: nothing in it points back
    assert str(home) not in texts(moved) and not (moved / "hpcft_base.json").exists()
    pipe = StableDiffusionPipeline.from_pretrained(str(moved), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    img = render(pipe)
    assert img.shape == (32, 32, 3) and img.std() > 0
    # the same renders as the asset's base with its LoRA loaded (same sampler: the trainer's)
    fused = render(t2i.load_pipeline(str(moved)))
    lora = render(t2i.load_pipeline(str(published / "base"), str(published)))
    assert abs(fused - lora).max() <= 2

    plain = tmp_path / "plain"  # without --merge: the LoRA and its base, also relocatable
    ok(run(["models", "export", "t2i-tiny", "-o", str(plain)]))
    os.rename(plain, tmp_path / "plain-moved")
    d = tmp_path / "plain-moved"
    assert abs(render(t2i.load_pipeline(t2i.lora_base(str(d)), str(d))) - lora).max() <= 1
