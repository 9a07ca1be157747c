"""training.report_to: real TensorBoard event files and a real MLflow file store, read back and compared with
metrics.jsonl, for the causal-LM core and a trl trainer (tiny models, a few steps on CPU)."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
from support.train_helpers import ctx_for, job_config, metrics_rows, torch_threads  # noqa: E402

from hpcft.errors import ConfigError  # noqa: E402
from hpcft.rundir.metrics_io import loss_series  # noqa: E402


@pytest.fixture(autouse=True)
def few_threads():
    with torch_threads(2):
        yield


def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc, {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def mlflow_run(run_dir, experiment="default"):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, runs
    return client, runs[0]


def history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.train
def test_lora_run_reports_the_metrics_series_to_tensorboard_and_mlflow(tmp_path):
    from hpcft.train.entry import run

    out = tmp_path / "run"
    cfg = job_config(out, "method=lora", "training.max_steps=6", "training.batch_size=8",
                     "training.sequence_length=64", "training.learning_rate=1e-2", "training.keep_checkpoints=off",
                     "training.report_to=[tensorboard,mlflow]", "name=tracked")
    run(cfg, ctx_for(out))

    rows = metrics_rows(out)
    train = [r for r in rows if r["type"] == "train"]
    evals = [r for r in rows if r["type"] == "eval" and r["split"] == "validation"]
    assert len(train) == 6 and evals, rows
    want_loss = list(zip(*loss_series(rows)["train"], strict=True))
    want_val = [(r["step"], r["loss"]) for r in evals]

    # TensorBoard: the same series (stored as float32), the resolved config as text
    acc, tb = tensorboard_scalars(out)
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/peak_mem_mb", "validation/loss",
                "validation/perplexity", "test/loss"):
        assert key in tb, (key, sorted(tb))
    assert [s for s, _ in tb["train/loss"]] == [s for s, _ in want_loss]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([v for _, v in want_loss], rel=1e-6)
    assert [v for _, v in tb["train/lr"]] == pytest.approx([r["lr"] for r in train], rel=1e-6)
    assert tb["validation/loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in want_val]
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "learning_rate: 0.01" in config_text and "report_to:" in config_text

    # MLflow (file store in the run directory): the same series exactly, the config as params and artifact
    client, mrun = mlflow_run(out)
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == "tracked"
    assert history(client, mrun.info.run_id, "train/loss") == want_loss
    assert history(client, mrun.info.run_id, "train/tokens_per_s") == [(r["step"], r["tokens_per_s"]) for r in train]
    assert history(client, mrun.info.run_id, "validation/loss") == want_val
    assert mrun.data.params["training.learning_rate"] == "0.01"
    assert mrun.data.params["method.name"] == "lora"
    local = client.download_artifacts(mrun.info.run_id, "config.yaml", str(tmp_path))
    assert "report_to:" in open(local).read()


@pytest.mark.train
def test_trl_method_reports_through_the_same_writer(tmp_path):
    """reward (trl RewardTrainer): its own series (accuracy ...) reach TensorBoard like metrics.jsonl has them."""
    import trainers.reward

    cfg = job_config(tmp_path, "method=reward", "data=tiny_pref", "training.batch_size=8", "training.max_steps=4",
                     "training.sequence_length=64", "training.keep_checkpoints=off", "training.report_to=[tensorboard]")
    trainers.reward.train(cfg, ctx_for(tmp_path))
    rows = metrics_rows(tmp_path)
    train = [r for r in rows if r["type"] == "train"]
    _, tb = tensorboard_scalars(tmp_path)
    assert [s for s, _ in tb["train/loss"]] == [r["step"] for r in train]
    assert [v for _, v in tb["train/loss"]] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [v for _, v in tb["validation/accuracy"]] == pytest.approx(
        [r["accuracy"] for r in rows if r["type"] == "eval" and r["split"] == "validation"], rel=1e-6)
    assert not (tmp_path / "mlruns").exists()


def test_series_names_and_skipped_lines():
    from hpcft.train.trackers import series

    assert series({"type": "train", "step": 3, "epoch": 0.5, "loss": 1.5, "lr": 1e-3, "samples": [1, 2],
                   "time": 1.0}) == (3, {"train/epoch": 0.5, "train/loss": 1.5, "train/lr": 1e-3})
    assert series({"type": "eval", "split": "validation", "epoch": 1, "step": 8, "loss": 2.0, "perplexity": 7.4}) \
        == (8, {"validation/loss": 2.0, "validation/perplexity": 7.4})
    assert series({"type": "data", "split": "train", "samples": 10, "truncated": 0}) is None


def test_report_to_is_checked_at_submit(monkeypatch):
    import hpcft.jobs.preflight
    from hpcft.train import trackers

    with pytest.raises(ConfigError, match=r"^training.report_to=\[tensorboard,nope\]: unknown tracker 'nope'; use"):
        hpcft.jobs.preflight.load(["training.report_to=[tensorboard,nope]"])
    with pytest.raises(ConfigError, match=r"^training.report_to: expected a list; write training.report_to=\[a,b\]"):
        hpcft.jobs.preflight.load(["training.report_to=tensorboard"])
    monkeypatch.setitem(trackers.KNOWN, "wandb", ("hpcft_no_such_module", "pip install wandb"))
    with pytest.raises(ConfigError, match=r"wandb is not installed here; install it \(pip install wandb\)"):
        hpcft.jobs.preflight.load(["training.report_to=[wandb]"])
    assert list(hpcft.jobs.preflight.load(["training.report_to=[tensorboard,mlflow]"]).training.report_to) == [
        "tensorboard", "mlflow"]
    assert list(hpcft.jobs.preflight.load([]).training.report_to) == []  # none by default


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is None, reason="wandb is not installed")
@pytest.mark.train
def test_wandb_offline_run_in_the_run_directory(tmp_path, monkeypatch):
    from hpcft.train.entry import run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = job_config(tmp_path, "method=lora", "training.max_steps=2", "training.batch_size=8",
                     "training.sequence_length=64", "training.keep_checkpoints=off", "training.report_to=[wandb]")
    run(cfg, ctx_for(tmp_path))
    (log,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing sent, all kept here
    data = log.read_bytes()
    assert b"train/loss" in data and b"train/tokens_per_s" in data and b"learning_rate" in data


@pytest.mark.train
def test_secrets_never_reach_the_trackers(tmp_path):
    """notify.urls may carry a password (issue 19): MLflow's params and config artifact, and TensorBoard's config
    text, get "***" (hpcft.config.secrets.masked), never the URL."""
    from hpcft.train.entry import run

    secret = "Pa55-w0rd-19"
    out = tmp_path / "run"
    cfg = job_config(out, "method=lora", "training.max_steps=2", "training.batch_size=4",
                     "training.sequence_length=32", "training.keep_checkpoints=off",
                     "training.report_to=[mlflow,tensorboard]", "name=secretive",
                     f"notify.urls=[json://hook:{secret}@127.0.0.1:9/hpcft]")
    run(cfg, ctx_for(out))
    client, mrun = mlflow_run(out)
    params = mrun.data.params
    assert params["notify.urls"] == '["***"]', params.get("notify.urls")
    assert not [k for k, v in params.items() if secret in v or "json://" in v or "127.0.0.1:9" in v]
    artifact = open(client.download_artifacts(mrun.info.run_id, "config.yaml", str(tmp_path))).read()
    assert secret not in artifact and "json://" not in artifact and "'***'" in artifact
    acc, _ = tensorboard_scalars(out)
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert secret not in config_text and "json://" not in config_text
    assert list(cfg.notify.urls) == [f"json://hook:{secret}@127.0.0.1:9/hpcft"]  # the job itself keeps it
