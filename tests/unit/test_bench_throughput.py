"""How ``bench throughput`` pools repeated rounds (no training here: the rounds are given)."""

from cafe_dist.bench.throughput import pool_rounds


def _rec(sps: float) -> dict:
    return {"samples_per_sec": sps, "time_split_s": {"lookup": sps / 1e4}}


def test_a_ratio_is_taken_within_each_round_and_the_median_reported():
    # the machine's speed drifts between rounds: hashing 100 → 60 → 90; cafe 0.5, 0.9, 0.8 of it
    rounds = [{"hash": _rec(100), "cafe": _rec(50)}, {"hash": _rec(60), "cafe": _rec(54)},
              {"hash": _rec(90), "cafe": _rec(72)}]
    out = pool_rounds(rounds)
    assert out["cafe"]["vs_hash"] == 0.8  # the median of 0.5, 0.9, 0.8 (a ratio of medians: 54 / 90 = 0.6)
    assert out["cafe"]["vs_hash_runs"] == [0.5, 0.9, 0.8]
    assert out["cafe"]["samples_per_sec"] == 54 and out["cafe"]["time_split_s"] == {"lookup": 54 / 1e4}
    assert out["cafe"]["samples_per_sec_runs"] == [50, 54, 72]
    assert out["hash"]["vs_hash"] == 1.0 and "vs_full" not in out["hash"]


def test_one_round_is_reported_as_it_ran_and_a_failed_method_as_its_error():
    out = pool_rounds([{"hash": _rec(100), "cafe": _rec(70), "qr": {"error": "smallest form is 300x"}}])
    assert out["cafe"]["vs_hash"] == 0.7 and "vs_hash_runs" not in out["cafe"]
    assert out["qr"] == {"error": "smallest form is 300x"}
