import pytest

from hpcft.timefmt import format_duration, parse_duration


@pytest.mark.parametrize("text,seconds", [
    ("01:00:00", 3600), ("90", 5400), (5, 300), ("1:30", 90), ("2-00", 172800), ("1-02:03", 93780),
    ("1-02:03:04", 93784), ("00:00:05", 5),
])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4", "0", "00:00:00", "-5", True])
def test_parse_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_roundtrip():
    for s in (5, 3600, 93784, 172800):
        assert parse_duration(format_duration(s)) == s
    assert format_duration(93784) == "1-02:03:04"
