"""``cafe-dist plan``: TorchRec's planner over devices this machine does not have."""

from __future__ import annotations

import json

import pytest
import yaml

from cafe_dist.cli import main
from cafe_dist.data.profile import CRITEO_TB_CARDINALITIES


def _job(tmp_path, **ray):
    job = {"data": {"path": str(tmp_path / "nowhere")}, "embedding": {"method": "cafe", "dim": 128},
           "model": {"dense_arch": [512, 256], "over_arch": [1024, 1024, 512, 256]},
           "train": {"batch_size": 8192}, "ray": {"use_gpu": True, **ray}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return str(path)


def test_a_criteo_tb_plan_places_every_row_once_and_adds_up(tmp_path, capsys):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--config", _job(tmp_path), "--profile", "criteo-tb", "--world-size", "16",
               "--ratios", "1,100", "--output-json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "1x (full)" in text and "100x (cafe)" in text and "smallest world size that fits: 2" in text
    plans = json.loads(out.read_text())["plans"]
    full = plans[0]
    assert full["table_bytes"] == sum(CRITEO_TB_CARDINALITIES) * 128 * 4  # 96.1 GB of fp32 rows
    for p in plans:
        ranks = p["ranks"]
        assert len(ranks) == 16
        # every table's rows are on some rank exactly once (data-parallel tables: on every rank listed),
        # so the ranks' weights add up to the tables' bytes
        copies = {t["table"]: len(t["ranks"]) if t["sharding_type"] == "data_parallel" else 1 for t in p["tables"]}
        assert sum(t["rows"] * t["dim"] * 4 for t in p["tables"]) == p["table_bytes"]
        assert sum(r["weights"] for r in ranks) == sum(t["rows"] * t["dim"] * 4 * copies[t["table"]]
                                                       for t in p["tables"])
        rows = sum(t["rows"] * copies[t["table"]] for t in p["tables"])
        assert sum(r["optimizer"] for r in ranks) == rows * 4  # RowWiseAdagrad: one fp32 per row
        for r in ranks:
            assert r["total"] == sum(r[k] for k in ("weights", "optimizer", "io_buffers", "method_state", "values",
                                                    "dense"))
            assert r["total"] <= 80 * 1024**3
        placed = {name for r in ranks for name in r["tables"]}
        assert placed == {t["table"] for t in p["tables"]}
    assert plans[1]["ranks"][0]["method_state"] > 0  # CAFE's sketch and hot map on every worker
    # full's vocabulary on every rank (8 B a value), counted first on the driver; CAFE reads raw
    # values: only its few uncompressed small features are listed, and nothing is counted
    vocabulary = 8 * sum(c - 1 for c in CRITEO_TB_CARDINALITIES)
    assert all(r["values"] == vocabulary for r in plans[0]["ranks"]) and plans[0]["driver_bytes"] > vocabulary
    assert 0 < plans[1]["values_bytes"] < vocabulary / 1000 and plans[1]["driver_bytes"] == 0
    assert "the driver counts every train value first" in text and "nothing to build on the driver" in text
    # the input path's CPU cores per GPU at one H200's rate, from the measured rows per core-second
    need = json.loads(out.read_text())["input"]
    assert need["cores_per_gpu"] == pytest.approx(need["samples_per_s_per_gpu"] / need["rows_per_core_s"])
    assert f"input: {need['cores_per_gpu']:.1f} CPU core(s) per GPU" in text


def test_an_impossible_plan_names_what_does_not_fit(tmp_path, capsys):
    job = _job(tmp_path, sharding_types=["table_wise"])
    rc = main(["plan", "--config", job, "--profile", "criteo-tb", "--world-size", "8", "--hbm-gb", "16",
               "--ratios", "1", "--no-min"])
    assert rc == 1
    text = capsys.readouterr().out
    # C1 (39.9 M rows x 128) needs 19 GiB: no device holds it and table-wise sharding cannot split it
    assert "does not fit: table t_C1 (39,884,406 x 128" in text and "cannot split a table" in text
    rc = main(["plan", "--config", _job(tmp_path), "--profile", "criteo-tb", "--world-size", "1",
               "--ratios", "1", "--no-min"])
    assert rc == 1
    assert "at least 2 devices" in capsys.readouterr().out


def test_a_dataset_the_machine_lacks_needs_a_profile(tmp_path, capsys):
    assert main(["plan", "--config", _job(tmp_path), "--ratios", "100"]) == 2
    assert "--profile criteo-tb" in capsys.readouterr().err


@pytest.mark.parametrize("world", [3])
def test_cpu_jobs_plan_table_wise(tmp_path, world, capsys):
    path = _job(tmp_path)
    job = yaml.safe_load(open(path))
    job["ray"]["use_gpu"] = False
    job["embedding"]["dim"] = 16
    open(path, "w").write(yaml.safe_dump(job))
    out = tmp_path / "p.json"
    assert main(["plan", "--config", path, "--profile", "criteo-kaggle", "--world-size", str(world),
                 "--hbm-gb", "24", "--ratios", "100", "--no-min", "--output-json", str(out)]) == 0
    p = json.loads(out.read_text())["plans"][0]
    assert {t["sharding_type"] for t in p["tables"]} == {"table_wise"}
    assert sum(r["weights"] for r in p["ranks"]) == p["table_bytes"]


@pytest.mark.parametrize("world", [8, 64])
def test_the_plan_weighs_each_ranks_hot_rows_by_their_expected_lookups(tmp_path, capsys, world):
    """CriteoTB under row-wise sharding: each rank holds its share of CAFE's hot rows, and the
    merger's deal keeps the busiest rank's expected hot lookups near the mean, or at the floor that
    single rows impose (one missing value is ~10 % of the hot traffic: on 64 ranks, 6.6x the mean)."""
    out = tmp_path / "plan.json"
    rc = main(["plan", "--config", _job(tmp_path, sharding_types=["row_wise"]), "--profile", "criteo-tb",
               "--world-size", str(world), "--ratios", "100,1000", "--no-min", "--output-json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "hot rows: busiest rank's expected hot lookups / mean rank's" in text and "hot lookups/step" in text
    for p in json.loads(out.read_text())["plans"]:
        ranks = p["ranks"]
        hot = [r["hot_rows"] for r in ranks]
        cafe = next(t for t in p["tables"] if t["table"] == "cafe")
        assert cafe["sharding_type"] == "row_wise" and sum(hot) == cafe["rows"]  # robe tier: the table is hot rows
        assert max(hot) - min(hot) <= max(hot) * 0.02 + world
        loads = [r["hot_lookups"] for r in ranks]
        assert p["hot_balance"] == pytest.approx(max(loads) / (sum(loads) / world))
        assert p["hot_balance_floor"] <= p["hot_balance"] <= max(1.25, 1.05 * p["hot_balance_floor"])
    assert json.loads(out.read_text())["plans"][1]["hot_balance"] <= (1.1 if world == 8 else 5.0)
