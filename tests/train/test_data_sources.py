"""Users' own data as they have it: every source (JSONL, JSON array, Parquet, CSV, save_to_disk, a hub dataset from the
local cache) and format (alpaca, prompt/response, OpenAI messages with a system prompt, ShareGPT for SFT and for
preference data, trl's conversational preference, other field names mapped with data.columns) through
`hpcft submit --dry-run` (the real command, in-process): the record count, the detected format and the rendered
example with the prompt marked. The trainer's reader gives the same records. (Malformed data: tests/bad_input.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hpcft.train.datacheck import MASK_CLOSE, MASK_OPEN

ALPACA = [{"instruction": f"Add {i} and {i + 1}", "input": "" if i % 2 else "show it", "output": str(2 * i + 1)}
          for i in range(12)]
SHAREGPT = [{"system": "be brief", "conversations": [{"from": "human", "value": f"hi {i}"},
                                                     {"from": "gpt", "value": f"hello {i}"}]} for i in range(9)]
MESSAGES = [{"messages": [{"role": "system", "content": "You count."}, {"role": "user", "content": f"after {i}?"},
                          {"role": "assistant", "content": str(i + 1)}, {"role": "user", "content": "and then?"},
                          {"role": "assistant", "content": str(i + 2)}]}
            for i in range(7)]
SG_PREF = [{"conversations": [{"from": "human", "value": f"is {i} even?"}],
            "chosen": {"from": "gpt", "value": "yes" if i % 2 == 0 else "no"},
            "rejected": {"from": "gpt", "value": "NO!" if i % 2 == 0 else "YES!"}} for i in range(10)]
CONV_PREF = [{"chosen": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": str(i)}],
              "rejected": [{"role": "user", "content": f"say {i}"}, {"role": "assistant", "content": "no"}]}
             for i in range(5)]


def hub_cache(root: Path, repo_id: str, splits: dict) -> Path:
    """A hub dataset in the layout `datasets.load_dataset(repo_id)` leaves in HF_DATASETS_CACHE
    (<owner>___<name>/default/0.0.0/<revision>/), built from local JSONL files: nothing is downloaded."""
    from datasets.packaged_modules.json.json import Json

    owner, name = repo_id.split("/")
    files = {}
    for split, recs in splits.items():
        files[split] = str(root / f"{name}-{split}.jsonl")
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in recs))
    cache = root / "hf-datasets"
    b = Json(cache_dir=str(cache), dataset_name=name, data_files=files, hash="0123abcd")
    b.repo_id = repo_id  # the hub id decides the directory; set after init (the builder checks data_files)
    b._cache_dir = b._build_cache_dir()
    b.download_and_prepare()
    built = Path(b.cache_dir)
    final = cache / f"{owner}___{name}" / "default" / "0.0.0" / "0123abcd"
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), str(final))
    shutil.rmtree(built.parents[1])  # the default-<config hash> directory of the local build
    info = json.loads((final / "dataset_info.json").read_text())
    info["config_name"] = "default"
    (final / "dataset_info.json").write_text(json.dumps(info))
    return cache


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from datasets import Dataset, DatasetDict

    d = tmp_path_factory.mktemp("userdata")
    (d / "alpaca.json").write_text(json.dumps(ALPACA, indent=2))  # a JSON array, pretty-printed
    (d / "sharegpt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SHAREGPT))
    Dataset.from_list(MESSAGES).to_parquet(str(d / "messages.parquet"))
    (d / "qa.csv").write_text("question,answer,id\n" + "".join(f'"What is {i}, really?",{i},{i:03d}\n'
                                                                for i in range(8)))
    pr = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(6)]
    DatasetDict({"train": Dataset.from_list(pr), "validation": Dataset.from_list(pr[:2])}).save_to_disk(
        str(d / "saved"))
    (d / "conv_pref.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CONV_PREF))
    hub_cache(d, "someorg/tiny_pref_sg", {"train": SG_PREF, "test": SG_PREF[:3]})
    return d


@pytest.fixture
def submit(data_dir, hpcft_home, monkeypatch):
    from typer.testing import CliRunner

    from hpcft.cli import app

    monkeypatch.setenv("HF_DATASETS_CACHE", str(data_dir / "hf-datasets"))

    def run(*args):
        r = CliRunner().invoke(app, ["submit", "--dry-run", "executor=local", *args])
        assert r.exit_code == 0, (r.output, r.exception)
        return r.output

    return run


# (overrides, the data line, the example must contain, the reader's records)
CASES = {
    "json_array_alpaca": (["data=custom", "data.train={d}/alpaca.json"],
                          "alpaca.json (json, 12 records), format alpaca",
                          f"### Input:\nshow it\n\n### Response:\n{MASK_CLOSE}1</s>", 12),
    "jsonl_sharegpt_system": (["data=custom", "data.train={d}/sharegpt.jsonl"],
                              "sharegpt.jsonl (jsonl, 9 records), format sharegpt",
                              f"{MASK_OPEN}<|system|>\nbe brief\n<|user|>\nhi 0\n<|assistant|>\n{MASK_CLOSE}hello 0\n",
                              9),
    "parquet_messages_multiturn": (["data=custom", "data.train={d}/messages.parquet"],
                                   "messages.parquet (parquet, 7 records), format messages",
                                   f"{MASK_OPEN}<|system|>\nYou count.\n<|user|>\nafter 0?\n<|assistant|>\n"
                                   f"{MASK_CLOSE}1\n{MASK_OPEN}<|user|>\nand then?\n<|assistant|>\n{MASK_CLOSE}2\n",
                                   7),
    "csv_columns_chat_template": (["data=custom", "data.train={d}/qa.csv", "data.columns.prompt=question",
                                   "data.columns.response=answer", "data.template=chat"],
                                  "qa.csv (csv, 8 records), format prompt_response",
                                  f"{MASK_OPEN}<|user|>\nWhat is 0, really?\n<|assistant|>\n{MASK_CLOSE}0\n", 8),
    "save_to_disk_splits": (["data=custom", "data.train={d}/saved", "data.validation={d}/saved",
                             "data.template=alpaca"],
                            "saved[train] (disk, 6 records), format prompt_response",
                            f"### Instruction:\np0\n\n### Response:\n{MASK_CLOSE}r0</s>", 6),
    "hub_cache_sharegpt_preference": (["method=dpo", "data=custom", "data.train=hf:someorg/tiny_pref_sg",
                                       "data.test=someorg/tiny_pref_sg"],
                                      "hf:someorg/tiny_pref_sg:train (hub, 10 records), format sharegpt_preference",
                                      "## prompt:\n<|user|>\nis 0 even?\n<|assistant|>\n## chosen:\nyes\n", 10),
    "conversational_preference_implicit_prompt": (["method=reward", "data=custom", "data.train={d}/conv_pref.jsonl"],
                                                  "conv_pref.jsonl (jsonl, 5 records), format preference",
                                                  "## prompt:\n<|user|>\nsay 0\n<|assistant|>\n## chosen:\n0\n", 5),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_source_and_format_through_submit(case, submit, data_dir):
    from hpcft.train.data import Records

    overrides, data_line, example, n = CASES[case]
    out = submit(*[o.replace("{d}", str(data_dir)) for o in overrides])
    assert data_line in out, out
    assert example in out, out
    # the trainer's reader: the same source, format and every record
    train = next(o for o in overrides if o.startswith("data.train=")).split("=", 1)[1].replace("{d}", str(data_dir))
    columns = {o.split("=")[0].split(".")[-1]: o.split("=")[1] for o in overrides if o.startswith("data.columns.")}
    recs = Records(train, "auto", columns, accepted=())
    rows = [r for _, r in recs]
    assert len(rows) == n and recs.format in data_line


def test_splits_by_role_and_what_the_trainers_get(data_dir, monkeypatch):
    from omegaconf import OmegaConf

    from hpcft.train.preference_data import load_preference, load_prompts
    from hpcft.train.sources import open_split, records

    monkeypatch.setenv("HF_DATASETS_CACHE", str(data_dir / "hf-datasets"))
    assert open_split(data_dir / "saved", "validation").split == "validation"
    assert open_split("hf:someorg/tiny_pref_sg", "test").name == "hf:someorg/tiny_pref_sg:test"
    cfg = OmegaConf.create({"format": "auto", "columns": {}})
    pref = load_preference("hf:someorg/tiny_pref_sg", cfg, "test")  # trl's conversational form
    assert len(pref) == 3 and pref[0] == {"prompt": [{"role": "user", "content": "is 0 even?"}],
                                          "chosen": [{"role": "assistant", "content": "yes"}],
                                          "rejected": [{"role": "assistant", "content": "NO!"}]}
    implicit = load_preference(data_dir / "conv_pref.jsonl", cfg)
    assert implicit[1]["prompt"] == [{"role": "user", "content": "say 1"}]
    assert implicit[1]["rejected"] == [{"role": "assistant", "content": "no"}]
    assert load_prompts("hf:someorg/tiny_pref_sg", cfg)[0] == {"prompt": [{"role": "user", "content": "is 0 even?"}]}
    # a JSON array read in part: the first records only, each with its line
    big = data_dir / "big.json"
    big.write_text("[\n" + ",\n".join(json.dumps({"text": "x" * 2000 + str(i)}) for i in range(3000)) + "\n]\n")
    first = list(records(open_split(big), limit=3))
    assert [w.split(":")[-1] for w, _ in first] == ["2 (record 1)", "3 (record 2)", "4 (record 3)"]
    assert len(list(records(open_split(big)))) == 3000


def test_templates(tmp_path):
    from hpcft.train.data import IGNORE, encode_record
    from hpcft.train.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    rec = {"prompt": "Q?", "response": "A!"}

    def text(template):
        ids, labels = encode_record(rec, "prompt_response", tok, template=template)
        return tok.decode(ids), tok.decode([t for t in labels if t != IGNORE])

    assert text("auto") == text("none") == ("<s>Q?\nA!</s>", "A!</s>")  # hpcft's fallback template is no chat template
    assert text("alpaca")[0].startswith("<s>### Instruction:\nQ?\n\n### Response:\nA!")
    tok.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
                        "{% if add_generation_prompt %}[assistant] {% endif %}"
    assert text("auto") == text("chat") == ("[user] Q?\n[assistant] A!\n</s>", "A!\n</s>")  # the model's own template
    from hpcft.train.formats import messages  # OpenAI content parts, ShareGPT speakers

    assert messages("w", [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"text": "b"}]},
                          {"from": "gpt", "value": "c"}], "messages") == [
        {"role": "system", "content": "ab"}, {"role": "assistant", "content": "c"}]


@pytest.mark.train
def test_reward_model_trains_on_sharegpt_preference_from_the_hub_cache(data_dir, tmp_path, monkeypatch):
    """trl gets the ShareGPT pairs in its conversational form and renders them with the chat template."""
    import trainers.reward
    from support.train_helpers import ctx_for, job_config, metrics_rows, torch_threads

    monkeypatch.setenv("HF_DATASETS_CACHE", str(data_dir / "hf-datasets"))
    cfg = job_config(tmp_path, "method=reward", "data=custom", "data.train=hf:someorg/tiny_pref_sg",
                     "data.test=hf:someorg/tiny_pref_sg", "training.max_steps=3", "training.batch_size=4",
                     "training.sequence_length=64", "training.keep_checkpoints=off")
    with torch_threads(1):
        summary = trainers.reward.train(cfg, ctx_for(tmp_path))
    assert summary["final_step"] == 3
    assert {r["split"] for r in metrics_rows(tmp_path, "eval")} == {"test"}
