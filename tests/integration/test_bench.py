"""Each bench command at a tiny size, through the CLI and the real training path (the two that train
through Ray cost ~30 s a run and are in the slow target)."""

import json

import pytest

from cafe_dist.cli import main


@pytest.mark.slow
def test_bench_quality_tiny_over_two_seeds(ray_cluster, tiny_synth, tmp_path):
    """full, hash and cafe at 100x on the first 20,000 rows, seeds 0 and 1; 10^6x cannot be reached
    on these features and says so."""
    out = tmp_path / "q.json"
    rc = main(["bench", "quality", "--data", str(tiny_synth), "--methods", "hash,cafe", "--ratios", "100,1000000",
               "--seeds", "0,1", "--rows", "20000", "--batch-size", "512", "--storage-path", str(tmp_path / "runs"),
               "--set", "train.max_steps=15", "--markdown", str(tmp_path / "q.md"), "--plot", str(tmp_path / "q.png"),
               "--output-json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["data_dir"].endswith("_first20000") and "partial" not in res
    meta = json.loads((tmp_path / "runs" / "data" / "tiny_first20000" / "meta.json").read_text())
    assert sum(meta["rows"].values()) == 20000
    runs = {(r["method"], r["ratio"], r["seed"]): r for r in res["runs"]}
    assert set(runs) == {(m, x, s) for m, x in (("full", 1.0), ("hash", 100.0), ("hash", 1e6), ("cafe", 100.0),
                                                 ("cafe", 1e6)) for s in (0, 1)}
    for (_, x, _), r in runs.items():
        if x < 1e6:
            assert 0.5 < r["auc"] < 1 and r["steps"] == 15, r
            assert abs(r["compression_ratio"] / r["ratio"] - 1) < 0.05, r  # achieved ≈ requested
        else:
            assert "smallest form" in r["error"]
    assert runs[("cafe", 100.0, 0)]["auc"] != runs[("cafe", 100.0, 1)]["auc"]  # the seed reached the run
    cell = res["summary"]["cafe"]["100"]
    aucs = [runs[("cafe", 100.0, s)]["auc"] for s in (0, 1)]
    assert cell["n"] == 2 and abs(cell["auc_mean"] - sum(aucs) / 2) < 1e-12
    assert abs(cell["auc_std"] - abs(aucs[0] - aucs[1]) / 2 ** 0.5) < 1e-12 and cell["auc_std"] > 0
    pair = res["paired_vs_cafe"]["hash"]["100"]
    assert pair["n"] == 2 and abs(pair["diff_mean"] - sum(runs[("hash", 100.0, s)]["auc"] - runs[("cafe", 100.0, s)]
                                                          ["auc"] for s in (0, 1)) / 2) < 1e-12
    assert res["goals"]["cafe_best_at_100x"] is not None and res["goals"]["cafe_10x_within_0.002_of_full"] is None
    md = (tmp_path / "q.md").read_text()
    assert "| method | 1x | 100x | 1e+06x |" in md and "(n=2)" in md and "| n/a |" in md and "paired by seed" in md
    assert (tmp_path / "q.png").read_bytes()[:4] == b"\x89PNG"


def test_seed_summaries_and_paired_gaps_are_computed_from_the_runs():
    from cafe_dist.bench.quality import paired_vs_cafe, summarise

    runs = [{"method": "cafe", "ratio": 100.0, "seed": 0, "auc": 0.70, "logloss": 0.5, "compression_ratio": 99.0},
            {"method": "cafe", "ratio": 100.0, "seed": 1, "auc": 0.74, "logloss": 0.4, "compression_ratio": 99.0},
            {"method": "hash", "ratio": 100.0, "seed": 0, "auc": 0.71, "logloss": 0.5, "compression_ratio": 100.0},
            {"method": "hash", "ratio": 100.0, "seed": 1, "auc": 0.72, "logloss": 0.5, "compression_ratio": 100.0},
            {"method": "qr", "ratio": 100.0, "seed": 0, "error": "unreachable"}]
    s = summarise(runs)
    assert s["cafe"]["100"]["n"] == 2 and abs(s["cafe"]["100"]["auc_mean"] - 0.72) < 1e-12
    assert abs(s["cafe"]["100"]["auc_std"] - 0.04 / 2 ** 0.5) < 1e-12 and abs(s["cafe"]["100"]["logloss_mean"] - 0.45) < 1e-12
    assert "qr" not in s
    p = paired_vs_cafe(runs)["hash"]["100"]
    assert p["n"] == 2 and abs(p["diff_mean"] - (0.01 - 0.02) / 2) < 1e-12 and abs(p["diff_std"] - 0.03 / 2 ** 0.5) < 1e-12


def test_quality_goals_are_judged_from_the_runs():
    from cafe_dist.bench.quality import goals

    runs = [{"method": m, "ratio": x, "seed": 0, "auc": a, "logloss": 0.45}
            for m, x, a in (("full", 1.0, 0.80), ("cafe", 10.0, 0.7985), ("cafe", 100.0, 0.79), ("hash", 100.0, 0.791))]
    runs.append({"method": "qr", "ratio": 100.0, "seed": 0, "error": "unreachable"})
    g = goals(runs)
    assert g["cafe_best_at_100x"] is False and abs(g["cafe_margin_at_100x"] + 0.001) < 1e-12
    assert g["cafe_10x_within_0.002_of_full"] is True and g["cafe_best_at_1000x"] is None


def test_reports_of_separate_seeds_merge_into_one(tmp_path, capsys):
    """One process per seed (so a stopped bench loses one seed at most), pooled afterwards with
    --merge: the summary counts both seeds; a report of other settings is refused."""
    from cafe_dist.bench.quality import report

    def one(seed: int, auc_cafe: float, batch: int = 256) -> str:
        spec = {"data": "x.tsv", "methods": ["cafe"], "ratios": [100.0], "num_workers": 1, "batch_size": batch,
                "seeds": [seed], "storage_path": "runs", "extra": [], "rows": None}
        runs = [{"method": m, "ratio": x, "seed": seed, "auc": a, "logloss": 0.45, "compression_ratio": x}
                for m, x, a in (("full", 1.0, 0.78), ("cafe", 100.0, auc_cafe), ("hash", 100.0, 0.75))]
        path = tmp_path / f"s{seed}-{batch}.json"
        report({"spec": spec, "data_dir": f"/elsewhere{seed}/data/x"}, runs, (100.0,), 1, 1.0, path, None, None)
        return str(path)

    a, b = one(0, 0.76), one(1, 0.74)
    out = tmp_path / "all.json"
    assert main(["bench", "quality", "--merge", f"{a},{b}", "--output-json", str(out),
                 "--markdown", str(tmp_path / "all.md")]) == 0
    res = json.loads(out.read_text())
    assert res["merged_from"] == [a, b] and res["spec"]["seeds"] == [0, 1]
    cell = res["summary"]["cafe"]["100"]
    assert cell["n"] == 2 and abs(cell["auc_mean"] - 0.75) < 1e-12 and cell["auc_std"] > 0
    assert res["paired_vs_cafe"]["hash"]["100"]["n"] == 2 and "(n=2)" in (tmp_path / "all.md").read_text()
    capsys.readouterr()
    with pytest.raises(ValueError, match="not one experiment"):
        main(["bench", "quality", "--merge", f"{a},{one(2, 0.7, batch=512)}"])


@pytest.mark.slow
def test_bench_throughput_tiny(ray_cluster, tiny_synth, tmp_path):
    out = tmp_path / "t.json"
    rc = main(["bench", "throughput", "--data", str(tiny_synth), "--methods", "full,hash,cafe", "--num-workers", "1",
               "--steps", "20", "--batch-size", "256", "--storage-path", str(tmp_path / "runs"),
               "--output-json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    m = res["methods"]
    assert set(m) == {"full", "hash", "cafe"}
    for rec in m.values():
        assert rec["samples_per_sec"] > 0 and rec["steps"] == 20
        assert abs(rec["vs_full"] - rec["samples_per_sec"] / m["full"]["samples_per_sec"]) < 1e-9
        assert abs(sum(rec["time_split"].values()) - 1) < 1e-6
        assert rec["time_split"]["lookup"] > 0 and rec["time_split"]["backward"] > 0
    assert m["hash"]["vs_hash"] == 1.0
    assert {"sketch", "sync", "migration"} <= set(m["cafe"]["time_split"])
    assert "method" in m["hash"]["time_split"]


@pytest.mark.slow  # two Ray Train worker groups (~40 s each)
def test_bench_input_tiny(ray_cluster, tiny_synth, tmp_path):
    """Two workers read their own rows: each a half of the split's bytes (one row group here, so
    each reads it whole: the figure says so), at a rate beside pyarrow's, resumed by a seek."""
    out = tmp_path / "i.json"
    rc = main(["bench", "input", "--data", str(tiny_synth), "--batch-size", "256,1024", "--num-workers", "2",
               "--repeats", "1", "--storage-path", str(tmp_path / "runs"), "--output-json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["batch_size"] for r in res["records"]] == [256, 1024] and res["device"] == "cpu"
    for r in res["records"]:
        assert r["rows_per_s"] > 0 and r["pyarrow_rows_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["rows_per_s"] / r["pyarrow_rows_per_s"])
        assert r["cores_per_h200"] == pytest.approx(res["h200_samples_per_s"] / r["rows_per_cpu_s"])
        assert len(r["bytes_read_over_share"]) == 2 and r["resumed_first_batch_s"] > 0


def test_bench_cafe_step_tiny(tiny_synth, capsys):
    rc = main(["bench", "cafe-step", "--data", str(tiny_synth), "--batch-size", "512", "--repeats", "1"])
    assert rc == 0
    rec = json.loads(capsys.readouterr().out)["records"][0]
    assert rec["batch_size"] == 512 and rec["ids"] > 0 and rec["hot_keys"] > 0
    for part in ("keys", "lookup", "scoring", "insert_numba", "insert_tensor"):
        assert rec[f"{part}_ids_per_s"] == pytest.approx(rec["ids"] / rec[f"{part}_s"])


def test_bench_sketch_tiny(tmp_path):
    out = tmp_path / "s.json"
    assert main(["bench", "sketch", "--num-ids", "200000", "--distinct", "50000", "--hot-slots", "2000",
                 "--buckets", "1500", "--recall-k", "200", "--precision-k", "2000", "--output-json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["insert_mids_per_s"] > 0 and 0.8 < res["recall"] <= 1 and "reference" not in res


def test_bench_coordinator_tiny(ray_cluster, tmp_path, capsys):
    """The real actor, fed by simulated ranks: the figures are measured and add up (bytes in are the
    ranks' summaries; every round merges; the verdict follows from the step times)."""
    out = tmp_path / "c.json"
    rc = main(["bench", "coordinator", "--workers", "2,8", "--slots", "2000", "--rounds", "4",
               "--output-json", str(out)])
    assert rc == 0 and "| 8 | 500 |" in capsys.readouterr().out  # summary_factor 2 x 2000 slots / 8 ranks
    res = json.loads(out.read_text())
    for row in res["by_workers"]:
        k, w = row["candidates_per_worker"], row["workers"]
        assert [r["round"] for r in row["rounds"]] == [0, 1, 2, 3]
        for r in row["rounds"]:
            assert r["bytes_in"] == w * k * 12  # int64 key + float32 score per candidate
            assert 0 < r["merge_s"] and 0 < r["store_s"] and r["merge_s"] <= r["ready_s"] + 1e-3 <= r["e2e_s"] + 2e-3
            assert r["hot"] == 2000  # the ranks send disjoint parts of the id space: together they fill every slot
        for v in row["verdict"].values():
            assert v["sync_lag_needed"] == max(1, -(-row["e2e_s_median"] * 1000 // v["step_ms"]))
