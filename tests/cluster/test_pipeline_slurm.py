"""Pipelines on the real local Slurm cluster: three stages submitted in one command, chained by
`--dependency=afterok`; a first stage that fails past the pre-queue check stops the others without an allocation
(cause parent_failed, one notification); `hpcft resume` of it runs the chain to the end."""

import json
import subprocess
from pathlib import Path

import pytest

from support import hpcft_cli, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.train]

ASSET = Path(__file__).resolve().parents[2] / "hpcft/assets/data/tiny_sft/train.jsonl"
COMMON = ["executor=slurm", "training.max_steps=3", "training.sequence_length=64", "training.batch_size=8",
          "resources.time=00:10:00"]


def cli(args, timeout=300):
    return subprocess.run(hpcft_cli() + args, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def spec_file(tmp_path, name, sft_data=None, extra=()):
    data = [f"data=custom, data.train={sft_data}, data.format=prompt_response"] if sft_data else []
    common = ", ".join(f'"{o}"' for o in [*COMMON, *extra])
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""name: {name}
overrides: [{common}]
stages:
  sft: [+experiment=sft_tiny{", " + data[0] if data else ""}]
  dpo:
    from: sft
    overrides: [+experiment=dpo_tiny]
  lora:
    from: dpo
    overrides: [+experiment=lora_tiny]
    publish: {{name: {name}-lora}}
""")
    return path


def submit(path):
    r = cli(["pipeline", "submit", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr
    return int(r.stdout.split()[1])


def show(pid):
    r = cli(["pipeline", "show", str(pid), "--json"])
    assert r.returncode == 0, r.stderr
    return {row["stage"]: row for row in json.loads(r.stdout)}


def ended(pid):
    cli(["sync"])
    rows = show(pid)
    return rows if all(r["state"] in ("success", "error", "stopped", "expired") for r in rows.values()) else None


def squeue(slurm_ids):
    out = subprocess.run(["squeue", "--noheader", "--states=all", "--format=%i|%T|%r|%E", "-j", ",".join(slurm_ids)],
                         capture_output=True, text=True).stdout
    return {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines() if line.strip()}


def sacct(slurm_ids):
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State,Start,NodeList", "-j", ",".join(slurm_ids)],
                         capture_output=True, text=True).stdout
    return {line.split("|")[0]: line.split("|")[1:] for line in out.splitlines() if line.strip()}


def test_three_stages_in_one_command_end_success(slurm_cluster, hpcft_home, tmp_path):
    pid = submit(spec_file(tmp_path, "pipe-ok"))
    rows = show(pid)  # returned at once: the later stages wait in Slurm's queue behind their parents
    sft, dpo, lora = (rows[s]["slurm"] for s in ("sft", "dpo", "lora"))
    queue = squeue([dpo, lora])
    assert queue[dpo][2] == f"afterok:{sft}(unfulfilled)" and queue[lora][2] == f"afterok:{dpo}(unfulfilled)", queue
    assert rows["dpo"]["state"] == rows["lora"]["state"] == "queued"

    rows = wait_for(lambda: ended(pid), "the pipeline to end", timeout=900, every=5)
    assert {s: r["state"] for s, r in rows.items()} == {"sft": "success", "dpo": "success", "lora": "success"}, rows
    assert rows["dpo"]["parent"] == rows["sft"]["job"] and rows["lora"]["parent"] == rows["dpo"]["job"]
    for child, parent in (("dpo", "sft"), ("lora", "dpo")):
        events = cli(["events", str(rows[child]["job"])]).stdout
        assert f"model.path: starts from the final model of job {rows[parent]['job']}" in events, events
    dpo_cfg = json.loads(cli(["list", "--json"]).stdout)
    dpo_cfg = next(j for j in dpo_cfg if j["id"] == rows["dpo"]["job"])
    assert Path(dpo_cfg["output_dir"], "final").is_dir()
    assets = cli(["models", "list"]).stdout
    assert "pipe-ok-lora" in assets, assets  # the last stage's publish


def test_a_failed_first_stage_stops_the_chain_then_resume_runs_it(slurm_cluster, hpcft_home, tmp_path, receiver):
    good = ASSET.read_text()
    data = tmp_path / "train.jsonl"  # 256 good records (the submit reads 200), then a broken one: the trainer fails
    data.write_text(good + '{"prompt": "broken\n')
    path = spec_file(tmp_path, "pipe-fail", data, [f"notify.urls=[{receiver.url}]", "notify.on=[error,expired]"])
    pid = submit(path)
    rows = wait_for(lambda: ended(pid), "the failed pipeline to end", timeout=600, every=5)
    assert rows["sft"]["state"] == "error" and rows["sft"]["cause"] == "bad_input", rows["sft"]
    for stage, parent in (("dpo", "sft"), ("lora", "dpo")):
        assert rows[stage]["state"] == "stopped" and rows[stage]["cause"] == "parent_failed", rows[stage]
        assert f"parent job {rows[parent]['job']}" in rows[stage]["reason"]
    ids = [rows["dpo"]["slurm"], rows["lora"]["slurm"]]
    acct = wait_for(lambda: (lambda a: a if all(a.get(i, [""])[0].startswith("CANCELLED") for i in ids) else None)(
        sacct(ids)), "Slurm to record the dependants cancelled", timeout=60, every=2)
    for i in ids:  # no allocation: never started, no node
        assert acct[i][1] in ("None", "Unknown") and acct[i][2] == "None assigned", acct
    titles = [m["title"] for m in receiver.messages]
    assert titles == [f"hpcft job {rows['sft']['job']} pipe-fail:sft: error"], titles  # one, naming the stage

    data.write_text(good)
    r = cli(["resume", str(rows["sft"]["job"])])
    assert r.returncode == 0, r.stdout + r.stderr
    again = show(pid)
    assert again["dpo"]["state"] == again["lora"]["state"] == "queued"
    queue = squeue([again["dpo"]["slurm"]])
    assert queue[again["dpo"]["slurm"]][2] == f"afterok:{again['sft']['slurm']}(unfulfilled)", queue
    rows = wait_for(lambda: ended(pid), "the resumed pipeline to end", timeout=900, every=5)
    assert {s: r["state"] for s, r in rows.items()} == {"sft": "success", "dpo": "success", "lora": "success"}, rows
    assert rows["lora"]["parent"] == rows["dpo"]["job"]
    assert len(receiver.messages) == 1
