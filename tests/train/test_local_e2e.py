"""The local executor end to end, through the real CLI, really training the tiny model on CPU."""

import json
import subprocess
import time
from pathlib import Path

import pytest

from support import hpcft_cli

pytestmark = pytest.mark.train

FAST = ["executor=local", "training.sequence_length=64", "training.batch_size=8"]


def run(args, timeout=600):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout)


def jobs():
    return json.loads(run(["list", "--json"]).stdout)


def wait_state(job_id, states, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = next(j for j in jobs() if j["id"] == job_id)
        if j["state"] in states:
            return j
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} never reached {states}: {j}")


def test_quickstart_lora_finetune(hpcft_home):
    """README command one: success in the ledger, a falling loss curve, an adapter that reloads."""
    r = run(["submit", "+experiment=quickstart", "executor=local", "--wait"])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    (job,) = jobs()
    assert job["state"] == "success" and job["method"] == "lora"
    out = Path(job["output_dir"])

    c = run(["curve", str(job["id"])])
    assert c.returncode == 0, c.stderr
    first, last = c.stdout.splitlines()[0].split("train loss ")[1].split(" over")[0].split(" -> ")
    assert float(last) < float(first) - 0.3
    assert (out / "loss.png").stat().st_size > 1000

    ev = run(["events", str(job["id"])]).stdout
    for kind in ("submitted", "started", "checkpoint", "finished", "running -> success"):
        assert kind in ev, ev
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept == ["step-00000080", "step-00000096"]  # keep_checkpoints=2, every 16 steps

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = out / "final"
    assert (final / "adapter_model.safetensors").exists()
    tok = AutoTokenizer.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(out / "base")
    plain = base(**tok("What is 2 plus 3?", return_tensors="pt")).logits
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), final)
    tuned = model(**tok("What is 2 plus 3?", return_tensors="pt")).logits
    assert not torch.allclose(plain, tuned)  # the adapter is really applied


def test_time_limit_expires_job(hpcft_home):
    r = run(["submit", *FAST, "resources.time=0:08", "resources.signal_grace=0", "training.epochs=500", "--wait"])
    assert r.returncode == 1
    (job,) = jobs()
    assert job["state"] == "expired", job
    assert "time limit" in job["state_reason"]
    assert "running -> expired" in run(["events", str(job["id"])]).stdout


def test_stop_is_stopped_not_error(hpcft_home):
    r = run(["submit", *FAST, "training.epochs=500"])
    assert r.returncode == 0, r.stderr
    (job,) = jobs()
    wait_state(job["id"], {"running"})
    s = run(["stop", str(job["id"])])
    assert s.returncode == 0 and "stop requested" in s.stdout
    j = wait_state(job["id"], {"stopped", "error", "success"}, timeout=60)
    assert j["state"] == "stopped" and j["state_reason"] == "stopped by user"
    time.sleep(2)  # the supervisor's own end must not overwrite the user's stop
    assert next(x for x in jobs() if x["id"] == job["id"])["state"] == "stopped"


def _bad_after_the_sample() -> str:
    """Good records past what submit reads (hpcft.train.datacheck.SAMPLE), then one without `response`: it passes
    the check before the queue and fails the job when the trainer reads the whole file."""
    from hpcft.train.datacheck import SAMPLE

    assert BAD_LINE > SAMPLE
    return '{"prompt": "a", "response": "b"}\n' * (BAD_LINE - 1) + '{"prompt": "c"}\n'


BAD_LINE = 251


def test_bad_record_fails_job_with_located_reason(hpcft_home, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(_bad_after_the_sample())
    r = run(["submit", *FAST, "data=custom", f"data.train={data}", "data.format=prompt_response", "--wait"])
    assert r.returncode == 1
    (job,) = jobs()
    assert job["state"] == "error"
    assert f"{data}:{BAD_LINE}" in job["state_reason"] and "response" in job["state_reason"], job["state_reason"]


def test_resume_after_stop_reaches_the_same_final_step(hpcft_home):
    args = [*FAST, "training.max_steps=40", "training.save_strategy=steps", "training.save_interval=5",
            "training.epochs=100"]
    r = run(["submit", *args])
    (job,) = jobs()
    jid = str(job["id"])
    out = Path(job["output_dir"])
    deadline = time.time() + 300
    while not (out / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.3)
    run(["stop", jid])
    j = wait_state(job["id"], {"stopped", "success"})
    assert j["state"] == "stopped", "the run finished before it could be stopped; raise max_steps"
    r = run(["resume", jid, "--wait"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    j = next(x for x in jobs() if x["id"] == job["id"])
    assert j["state"] == "success" and j["attempt"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary.get("step", summary.get("final_step")) == 40


def test_cron_retry_never_resubmits_a_data_error(hpcft_home, tmp_path):
    """A job that failed on a malformed data file can never succeed: `hpcft retry` leaves it alone."""
    data = tmp_path / "train.jsonl"
    data.write_text(_bad_after_the_sample())
    r = run(["submit", *FAST, "data=custom", f"data.train={data}", "data.format=prompt_response", "--wait"])
    assert r.returncode == 1
    (job,) = jobs()
    assert job["state"] == "error" and "not retried" in job["state_reason"]
    out = run(["retry", "--max-attempts", "3", "--backoff", "0", "--exit-codes", "1"])
    assert out.returncode == 0, out.stderr
    assert "0 resubmitted" in out.stdout and "1 not retryable" in out.stdout, out.stdout
    assert next(x for x in jobs() if x["id"] == job["id"])["attempt"] == 1


def _steps(out):
    from hpcft.rundir.metrics_io import read_metrics

    return [r["step"] for r in read_metrics(out, "train")]


def test_time_limit_warning_requeues_locally_and_loses_no_step(hpcft_home):
    """resources.on_timeout=requeue on the local executor: the supervisor sends the warning `signal_grace` seconds
    before the limit, the trainer saves at the next step boundary and exits 75, the supervisor starts it again
    from that checkpoint (same ledger job, same attempt). No step is ever trained twice, and the final weights
    equal those of the same job run without interruption."""
    import os

    from safetensors.torch import load_file

    common = [*FAST, "training.max_steps=150", "training.epochs=100", "training.learning_rate=1e-2",
              "training.save_strategy=steps", "training.save_interval=1000"]
    env = dict(os.environ, HPCFT_TEST_STEP_DELAY_S="0.4")  # 150 steps >= 60 s: longer than the first window
    sub = lambda *a: subprocess.run(hpcft_cli() + ["submit", *common, *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=120, env=env)
    r1 = sub("name=requeued", "resources.time=1:30", "resources.signal_grace=30", "resources.on_timeout=requeue",
             "resources.max_requeues=8")
    r2 = sub("name=uninterrupted", "resources.time=10")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    by = {j["name"]: j for j in jobs()}
    a = wait_state(by["requeued"]["id"], {"success", "error", "expired"}, timeout=900)
    b = wait_state(by["uninterrupted"]["id"], {"success", "error", "expired"}, timeout=900)
    assert a["state"] == "success" and b["state"] == "success", (a, b)
    assert a["attempt"] == 1  # the same attempt went on: requeues are not retries
    ev = run(["events", str(a["id"])]).stdout
    n_requeues = ev.count(" requeue ")
    assert n_requeues >= 1 and ev.count("restart ") == n_requeues, ev
    assert "(warning)" in ev  # the checkpoints the warning asked for
    out_a, out_b = Path(a["output_dir"]), Path(b["output_dir"])
    steps = _steps(out_a)
    assert steps == list(range(1, 151)), "a step was trained twice or lost"
    assert json.loads((out_a / "summary.json").read_text())["final_step"] == 150
    wa = load_file(str(out_a / "final" / "adapter_model.safetensors"))
    wb = load_file(str(out_b / "final" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] - wb[k]).abs().max() < 1e-6 for k in wa)
