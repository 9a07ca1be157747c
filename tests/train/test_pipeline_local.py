"""A pipeline on the local executor, through the CLI: the stages run in order (each waits for its parent, then starts
from its model), a failed first stage stops the others (cause parent_failed) and `hpcft resume` of it runs the chain
to the end."""

import json
import subprocess
import time

import pytest

from support import hpcft_cli, wait_for

pytestmark = pytest.mark.train

ASSET = "hpcft/assets/data/tiny_sft/train.jsonl"


def cli(args, timeout=300):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def show(pid):
    r = cli(["pipeline", "show", str(pid), "--json"])
    assert r.returncode == 0, r.stderr
    return {row["stage"]: row for row in json.loads(r.stdout)}


def ended(pid):
    rows = show(pid)
    return rows if all(r["state"] in ("success", "error", "stopped", "expired") for r in rows.values()) else None


def test_local_pipeline_fails_then_resumes_to_the_end(hpcft_home, tmp_path, receiver):
    from pathlib import Path

    good = (Path(__file__).resolve().parents[2] / ASSET).read_text()
    data = tmp_path / "train.jsonl"  # 256 good records (the submit reads 200), then a broken one: the trainer fails
    data.write_text(good + '{"prompt": "broken\n')
    spec = tmp_path / "chain.yaml"
    spec.write_text(f"""name: chain
overrides: [executor=local, training.max_steps=3, training.sequence_length=64, training.batch_size=8,
            "notify.urls=[{receiver.url}]", "notify.on=[error,expired]"]
stages:
  sft: [+experiment=sft_tiny, data=custom, data.train={data}, data.format=prompt_response]
  dpo:
    from: sft
    overrides: [+experiment=dpo_tiny]
  lora:
    from: dpo
    overrides: [+experiment=lora_tiny]
""")
    r = cli(["pipeline", "submit", str(spec)])
    assert r.returncode == 0, r.stdout + r.stderr
    pid = int(r.stdout.split()[1])
    assert "sft job" in r.stdout and "dpo job" in r.stdout and "lora job" in r.stdout
    queued = show(pid)  # it returned at once: every later stage is queued behind one that has not ended
    assert queued["dpo"]["state"] == queued["lora"]["state"] == "queued" and queued["lora"]["after"] == [
        queued["dpo"]["job"]]

    rows = wait_for(lambda: ended(pid), "the failed pipeline to end", timeout=300, every=3)
    assert rows["sft"]["state"] == "error" and rows["sft"]["cause"] == "bad_input"
    for stage, parent in (("dpo", "sft"), ("lora", "dpo")):
        assert rows[stage]["state"] == "stopped" and rows[stage]["cause"] == "parent_failed", rows[stage]
        assert f"parent job {rows[parent]['job']}" in rows[stage]["reason"]
        kinds = [e["kind"] for e in json.loads(cli(["events", str(rows[stage]["job"]), "--json"]).stdout)]
        assert "started" not in kinds and "lineage" not in kinds and "parent_failed" in kinds  # never ran
    time.sleep(2)  # a late message would arrive now
    titles = [m["title"] for m in receiver.messages]
    assert titles == [f"hpcft job {rows['sft']['job']} chain:sft: error"]  # one message, naming the failed stage
    listing = cli(["list"]).stdout
    assert "chain:sft" in listing and "chain:dpo" in listing and "chain:lora" in listing

    data.write_text(good)  # the data fixed: resuming the failed stage re-queues the stages behind it
    r = cli(["resume", str(rows["sft"]["job"])])
    assert r.returncode == 0, r.stdout + r.stderr
    rows = wait_for(lambda: ended(pid), "the resumed pipeline to end", timeout=600, every=3)
    assert {s: r["state"] for s, r in rows.items()} == {"sft": "success", "dpo": "success", "lora": "success"}
    assert rows["dpo"]["parent"] == rows["sft"]["job"] and rows["lora"]["parent"] == rows["dpo"]["job"]
    assert rows["lora"]["after"] == [rows["dpo"]["job"]]
    lineage = cli(["events", str(rows["lora"]["job"])]).stdout
    assert f"starts from the final model of job {rows['dpo']['job']}" in lineage
    assert "re-queued behind job" in lineage
    assert len(receiver.messages) == 1
