"""The figures the training console prints (cafe_dist.train.metrics)."""

from __future__ import annotations

import pytest

from cafe_dist.train.metrics import eta_s, stats_text


def test_the_eta_counts_the_evaluations_still_to_come():
    assert eta_s(100, 0.1, 0.0, 20.0, 0) == pytest.approx(10.0)  # nothing paused yet: the steps alone
    # 80 s of evaluations over 20 s of training, 2 of them: the steps left take 5x their time, plus a
    # final evaluation of the mean length (the "ETA 0m04s with 80 s left")
    assert eta_s(100, 0.1, 80.0, 20.0, 2) == pytest.approx(10.0 * 5 + 40.0)


def test_levels_keep_their_digits_and_counts_read_as_counts():
    assert stats_text({"hot": 1234.0, "churn": 0.153, "promoted": 20.0}) == " hot 1,234 churn 0.153 promoted 20"
