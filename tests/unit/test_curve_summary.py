"""`hpcft curve` on a long run: a series of 120 evaluations reads as first, best, last and a sparkline on one short
line, not as 120 numbers; a short one is still listed in full."""

import math

from hpcft.cli.monitor_cmds import curve_report
from hpcft.cli.plot import LIST_AT_MOST, series_line


def test_a_long_series_is_summarised():
    xs = [16.0 * (i + 1) for i in range(120)]
    ys = [2.0 * math.exp(-i / 30) + 0.3 + 0.1 * math.sin(i) for i in range(120)]
    best = min(range(120), key=lambda i: ys[i])
    line = series_line(xs, ys)
    head, spark = line.split("  ")
    assert head == (f"120 values, first 2.3000 (step 16), best {ys[best]:.4f} (step {xs[best]:g}), "
                    f"last {ys[-1]:.4f} (step 1920)")
    assert len(spark) == 30 and set(spark) <= set("▁▂▃▄▅▆▇█") and spark[0] == "█" and spark[-1] == "▁"
    up = series_line(xs, [-y for y in ys], higher=True)  # an accuracy or a reward: the highest is best
    assert f"best {-ys[best]:.4f} (step {xs[best]:g})" in up and up.split("  ")[1][0] == "▁"
    assert series_line([1, 2, 3], [3.0, 1.0, 1.0]) == "3.0000, 1.0000, 1.0000"  # short: every value
    assert series_line(list(range(LIST_AT_MOST + 1)), [5.0, 1.0] + [1.0] * (LIST_AT_MOST - 1)).startswith(
        f"{LIST_AT_MOST + 1} values, first 5.0000 (step 0), best 1.0000 (step 1)")  # a tie: the earliest


def test_curve_prints_one_short_line_per_long_series():
    recs = [{"type": "train", "step": s, "loss": 3.0 - s / 1000} for s in range(1, 1921, 16)]
    recs += [{"type": "eval", "split": "validation", "step": 16 * (e + 1), "loss": 2.5 - e / 100}
             for e in range(120)]
    recs += [{"type": "eval", "split": "test", "step": 1920, "loss": 1.4}]
    text, _ = curve_report(recs, "lora", "job 5 long")
    val = next(ln for ln in text.splitlines() if ln.startswith("validation loss by epoch: "))
    assert val.startswith("validation loss by epoch: 120 values, first 2.5000 (step 16), best 1.3100 (step 1920), "
                          "last 1.3100 (step 1920)  ") and len(val) < 160
    assert "test loss by epoch: 1.4000" in text  # one value: listed
