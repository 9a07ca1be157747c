import pytest

from hpcft.cli.plot import ascii_plot
from hpcft.rundir.metrics_io import loss_series


def test_resumed_steps_count_once_last_wins():
    recs = [{"type": "train", "step": s, "loss": 5.0 - s / 10} for s in (1, 2, 3, 4)]
    recs += [{"type": "train", "step": 4, "loss": 4.5}, {"type": "train", "step": 5, "loss": 4.4}]  # resumed at 3
    recs += [{"type": "eval", "split": "validation", "step": 5, "epoch": 1, "loss": 4.6}, {"type": "data"}]
    s = loss_series(recs)
    assert s["train"] == ([1.0, 2.0, 3.0, 4.0, 5.0], [4.9, 4.8, 4.7, 4.5, 4.4])
    assert s["validation"] == ([5.0], [4.6])


def test_ascii_plot_places_first_high_and_last_low():
    text = ascii_plot([1, 2, 3], [3.0, 2.0, 1.0], width=10, height=3)
    rows = text.splitlines()
    assert rows[0].endswith("|*" + " " * 9) and rows[2].rstrip().endswith("*")
    assert ascii_plot([], []) == "(no loss points yet)"


@pytest.fixture(params=["orjson", "json"])
def parser(request, monkeypatch):
    if request.param == "json":
        monkeypatch.setitem(__import__("sys").modules, "orjson", None)  # as where orjson is not installed
    return request.param


def test_parse_lines_takes_every_record_and_skips_damaged_lines(tmp_path, parser):
    from hpcft.rundir.metrics_io import parse_lines, read_metrics, read_metrics_since

    good = ['{"type": "train", "step": 1, "loss": 2.0}', '{"type": "train", "step": 2, "loss": 1.5}']
    assert parse_lines(good + [""]) == [{"type": "train", "step": 1, "loss": 2.0},
                                        {"type": "train", "step": 2, "loss": 1.5}]
    # a torn line, two objects on one line, a bare number, a list: each skipped alone, the rest kept in order
    bad = [good[0], '{"type": "tr', '{"step": 9}, {"step": 10}', "7", "[1, 2]", good[1], '{"x": 1}]']
    assert [r.get("step") for r in parse_lines(bad)] == [1, 2]
    (tmp_path / "metrics.jsonl").write_text("\n".join(good + ['{"type": "eval", "step": 2, "loss": 1.7}']) + "\n"
                                           + '{"type": "train", "st')
    assert [r["step"] for r in read_metrics(tmp_path, "train")] == [1, 2]
    recs, off = read_metrics_since(tmp_path)
    assert len(recs) == 3 and off == len("\n".join(good) + '\n{"type": "eval", "step": 2, "loss": 1.7}\n')


def test_parse_lines_keeps_nan_and_infinity_as_pythons_json_writes_them(parser):
    import json
    import math

    from hpcft.rundir.metrics_io import parse_lines

    lines = [json.dumps({"step": 1, "loss": float("nan")}), json.dumps({"step": 2, "loss": float("inf")}),
             json.dumps({"step": 3, "loss": 1.0})]
    got = parse_lines(lines)
    assert [r["step"] for r in got] == [1, 2, 3] and math.isnan(got[0]["loss"]) and got[1]["loss"] == float("inf")
