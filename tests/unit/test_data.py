import json

import pytest

from hpcft.train.data import (
    IGNORE,
    collate,
    detect_format,
    epoch_batches,
    epoch_order,
    load_split,
    shard,
    steps_per_epoch,
)
from hpcft.train.jsonl import DataError
from hpcft.train.tokenizer import byte_tokenizer


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def write(tmp_path, name, records):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return p


def decode_labels(tok, labels):
    return tok.decode([t for t in labels if t != IGNORE])


def test_text_loss_on_all_tokens(tmp_path, tok):
    s = load_split(write(tmp_path, "t.jsonl", [{"text": "hello"}]), "text", tok, 64)
    x = s.samples[0]
    assert x.labels == x.input_ids
    assert x.input_ids[0] == tok.bos_token_id and x.input_ids[-1] == tok.eos_token_id
    assert tok.decode(x.input_ids, skip_special_tokens=True) == "hello"


def test_prompt_response_masks_prompt_and_appends_eos(tmp_path, tok):
    s = load_split(write(tmp_path, "p.jsonl", [{"prompt": "Q?", "response": "A!"}]), "prompt_response", tok, 64)
    x = s.samples[0]
    assert x.input_ids[-1] == tok.eos_token_id
    assert decode_labels(tok, x.labels) == "A!</s>"
    assert tok.decode(x.input_ids, skip_special_tokens=True) == "Q?\nA!"
    # pretraining on SFT data: loss everywhere
    s2 = load_split(write(tmp_path, "p.jsonl", [{"prompt": "Q?", "response": "A!"}]), "auto", tok, 64,
                    loss_on_all=True)
    assert s2.samples[0].labels == s2.samples[0].input_ids and s2.format == "prompt_response"


def test_alpaca_with_and_without_input(tmp_path, tok):
    recs = [{"instruction": "Add", "input": "1 2", "output": "3"}, {"instruction": "Say hi", "output": "hi"}]
    s = load_split(write(tmp_path, "a.jsonl", recs), "auto", tok, 256)
    assert s.format == "alpaca"
    assert decode_labels(tok, s.samples[0].labels) == "3</s>"
    assert "### Input:\n1 2" in tok.decode(s.samples[0].input_ids)
    assert "### Input" not in tok.decode(s.samples[1].input_ids)
    assert decode_labels(tok, s.samples[1].labels) == "hi</s>"


def test_messages_loss_on_assistant_turns_only(tmp_path, tok):
    rec = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "yo"}, {"role": "user", "content": "bye"},
                        {"role": "assistant", "content": "ciao"}]}
    s = load_split(write(tmp_path, "m.jsonl", [rec]), "auto", tok, 256)
    assert s.format == "messages"
    x = s.samples[0]
    full = tok.decode(x.input_ids)
    assert full == tok.apply_chat_template(rec["messages"], tokenize=False) + "</s>"
    learned = decode_labels(tok, x.labels)
    assert "yo" in learned and "ciao" in learned
    assert "be brief" not in learned and "hi" not in learned.replace("ciao", "") and "bye" not in learned


def test_truncation_is_counted(tmp_path, tok):
    recs = [{"text": "x" * 100}, {"text": "short"}, {"text": "y" * 40}]
    s = load_split(write(tmp_path, "t.jsonl", recs), "text", tok, 32)
    assert s.truncated == 2
    assert [len(x.input_ids) for x in s.samples] == [32, 7, 32]


@pytest.mark.parametrize("records, fmt, expected", [
    ([{"prompt": "a", "response": "b"}, {"prompt": "c"}], "prompt_response", r"p\.jsonl:2: missing field 'response'"),
    ([{"text": "a"}, "", "{not json"], "text", r"p\.jsonl:3: invalid JSON"),
    ([{"text": 5}], "text", r"p\.jsonl:1: field 'text' must be a string"),
    ([{"messages": [{"role": "user"}]}], "messages", r"p\.jsonl:1: messages\[0\]"),
    ([{"messages": [{"role": "user", "content": "x"}]}], "messages", r"p\.jsonl:1: messages has no assistant"),
    ([{"foo": 1}], "auto", r"p\.jsonl:1: cannot detect"),
    ([{"instruction": "a"}], "alpaca", r"p\.jsonl:1: missing field 'output'"),
])
def test_malformed_records_are_located(tmp_path, tok, records, fmt, expected):
    with pytest.raises(DataError, match=expected):
        load_split(write(tmp_path, "p.jsonl", records), fmt, tok, 64)


def test_order_is_deterministic_and_sharded():
    assert epoch_order(50, 1, 0) == epoch_order(50, 1, 0)
    assert epoch_order(50, 1, 0) != epoch_order(50, 1, 1)
    assert sorted(epoch_order(50, 1, 3)) == list(range(50))
    a, b = shard(range(7), 0, 2), shard(range(7), 1, 2)
    assert len(a) == len(b) == 4 and set(a) | set(b) == set(range(7))
    steps = epoch_batches(10, 0, 0, batch_size=2, accumulation=2)
    assert len(steps) == steps_per_epoch(10, 2, 2, 1) == 2  # 5 micro-batches -> 2 full steps
    flat = [i for st in steps for mb in st for i in mb]
    assert len(set(flat)) == 8


def test_detect_and_collate(tok):
    assert detect_format({"text": "a"}) == "text"
    assert detect_format({"prompt": "a", "response": "b"}) == "prompt_response"
    from hpcft.train.data import Sample
    b = collate([Sample(0, [5, 6, 7], [IGNORE, 6, 7]), Sample(1, [8], [8])], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
