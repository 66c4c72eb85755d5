"""A trained model outside training: the tracked 2-worker CAFE run's logged model, ``cafe-dist
export`` (fp32, int8), ``evaluate`` and ``predict`` (a converted dataset and a raw TSV with a
malformed line) and a real ``mlflow models serve`` answering ``/invocations`` on loopback."""

from __future__ import annotations

import glob
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dmp_helpers import free_port, http_service

from cafe_dist.cli import main
from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.serving.export import load_trained
from cafe_dist.serving.model import ServedModel


def _data(out) -> str:
    return out.data_path


def _test_rows(data: str, n: int) -> tuple[DatasetMeta, dict[str, np.ndarray]]:
    meta = DatasetMeta.load(data)
    t = pq.read_table(sorted(glob.glob(f"{data}/test/*.parquet"))[0]).slice(0, n).to_pydict()
    return meta, {k: np.asarray(v) for k, v in t.items()}


def _raw_fields(meta: DatasetMeta, rows: dict[str, np.ndarray], i: int) -> list:
    """Row ``i`` as the raw log had it: integer counts (log(1+x) undone) and hex categoricals."""
    dense = [int(round(float(np.expm1(rows[c][i])))) for c in meta.dense_features]
    sparse = ["" if rows[c][i] == MISSING_ID else format(int(rows[c][i]), "x") for c in meta.sparse_features]
    return dense + sparse


def test_the_logged_model_scores_the_test_split_as_training_did(tracked, tmp_path, monkeypatch, capsys):
    uri, out, _ = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    got = tmp_path / "eval.json"
    assert main(["evaluate", "--model", f"runs:/{out.mlflow_run_id}/model", "--input", _data(out),
                 "--output-json", str(got)]) == 0
    ev = json.loads(got.read_text())
    assert round(ev["auc"], 4) == round(out.auc, 4) and ev["rows"] == DatasetMeta.load(_data(out)).rows["test"]
    assert ev["logloss"] == pytest.approx(out.logloss, abs=1e-4)


def test_export_fp32_and_int8_bytes_and_auc(tracked, tmp_path):
    _, out, _ = tracked
    run_dir = str(Path(out.checkpoint_path).parent)
    assert main(["export", "--checkpoint", run_dir, "--out", str(tmp_path / "fp32")]) == 0
    assert main(["export", "--checkpoint", run_dir, "--out", str(tmp_path / "int8"), "--quantize", "int8"]) == 0
    assert main(["export", "--checkpoint", run_dir, "--out", str(tmp_path / "int8")]) == 2  # never overwrites
    fp32 = json.loads((tmp_path / "fp32" / "model.json").read_text())["bytes"]
    int8 = json.loads((tmp_path / "int8" / "model.json").read_text())["bytes"]
    emb = ServedModel.load(tmp_path / "fp32").model.embedding
    # the tables as trained; of the method's state only the hot map (the sketch is training-only)
    assert fp32["tables"] == emb.table_bytes()
    # 4 B key + 4 B slot per hot id, its version, the per-feature flags and the compressed features' indices,
    # and the lists of values of the uncompressed features (8 B a value, and where each feature's starts)
    hot = len(emb.hot_map)
    assert hot > 0 and fp32["method_state"] == (8 * hot + 8 + len(emb.names) + 8 * len(emb.compressed)
                                                + emb.values_bytes() + 8 * len(emb.names))
    assert 8 * hot <= emb.aux_bytes() - emb.sketch.memory_bytes()  # what training accounts for the map
    assert fp32["training_embedding_bytes"] == out.embedding_bytes
    assert int8["tables"] < 0.4 * fp32["tables"]  # 16 + 4 bytes per row of 64
    from cafe_dist.serving.scoring import evaluate

    auc32 = evaluate(ServedModel.load(tmp_path / "fp32"), _data(out))["auc"]
    auc8 = evaluate(ServedModel.load(tmp_path / "int8"), _data(out))["auc"]
    assert round(auc32, 4) == round(out.auc, 4) and abs(auc8 - auc32) < 0.002


def test_an_export_is_as_small_as_its_tables_and_hashes_values_it_never_saw(tracked, tmp_path):
    """No vocabulary: the directory holds the tables, the dense weights, the hot map and the lists
    of the few uncompressed features' values; a value never seen is hashed like any other."""
    _, out, _ = tracked
    d = tmp_path / "m"
    assert main(["export", "--checkpoint", out.checkpoint_path, "--out", str(d)]) == 0
    doc = json.loads((d / "model.json").read_text())
    b = doc["bytes"]
    files = {p.name: p.stat().st_size for p in d.rglob("*") if p.is_file()}
    assert "vocab.parquet" not in files and sorted(files) == ["method_state.pt", "model.json", "values.parquet",
                                                              "weights.pt"]
    # file headers and model.json (the dataset's meta) are a fixed few KiB: the rest is the model itself
    assert sum(files.values()) <= 1.05 * (b["embeddings"] + b["dense"]) + 16 * 1024, (files, b)
    model = ServedModel.load(d)
    emb = model.model.embedding
    meta, rows = _test_rows(_data(out), 8)
    listed = pq.read_table(d / "values.parquet")  # at 100x the budget keeps under 1 % of the values listed
    assert listed.num_rows == sum(len(v) for v in emb.known.values()) == emb.values_bytes() // 8
    assert 0 < listed.num_rows < 0.01 * sum(meta.cardinality.values())
    dense = np.stack([np.asarray(rows[c], np.float32) for c in meta.dense_features], 1)
    raw = np.stack([np.asarray(rows[f], np.int64) for f in meta.sparse_features])
    seen = model.score(dense, raw)
    j = meta.sparse_features.index(emb.compressed[0].name)  # a compressed feature
    unseen = raw.copy()
    unseen[j] = (1 << 31) + np.arange(8)  # values no row holds (the data's values are hashes below 2**32)
    other = unseen.copy()
    other[j] += 1000
    a, b2 = model.score(dense, unseen), model.score(dense, other)
    assert np.isfinite(a).all() and ((a > 0) & (a < 1)).all()
    # hashed to their own rows: two unseen values score differently (one shared "unseen" id would not)
    assert not np.allclose(a, b2) and not np.allclose(a, seen)


def test_predict_a_raw_tsv_scores_every_good_line_and_reports_the_bad_one(tracked, tmp_path):
    _, out, _ = tracked
    model_dir = tmp_path / "not" / "there" / "m"  # export makes the parents
    assert main(["export", "--checkpoint", out.checkpoint_path, "--out", str(model_dir)]) == 0
    meta, rows = _test_rows(_data(out), 40)
    lines = ["\t".join([str(int(rows["label"][i]))] + [str(v) for v in _raw_fields(meta, rows, i)]) for i in range(40)]
    lines.insert(7, "1\tnot\ta\tcriteo\tline")
    tsv = tmp_path / "day.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    assert main(["predict", "--model", str(model_dir), "--input", str(tsv), "--out", str(tmp_path / "p.parquet")]) == 0
    got = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert len(got["score"]) == 40 and got["label"] == [int(x) for x in rows["label"]]
    bad = (tmp_path / "p.bad_rows.tsv").read_text().splitlines()
    assert len(bad) == 2 and bad[1].split("\t")[1:3] == ["8", "expected 40 fields, got 5"]  # line 8, and why
    # the same rows from the converted dataset score the same: one mapping from raw values to ids
    assert main(["predict", "--model", str(model_dir), "--input", _data(out), "--out", str(tmp_path / "q.parquet")]) == 0
    ref = pq.read_table(tmp_path / "q.parquet").column("score").to_numpy()[:40]
    np.testing.assert_allclose(got["score"], ref, atol=1e-5)


def test_mlflow_models_serve_answers_invocations_like_predict(tracked, tmp_path):
    uri, out, _ = tracked
    meta, rows = _test_rows(_data(out), 25)
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")  # it runs `uvicorn` from PATH: the venv's
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ['PATH']}"}
    with http_service([str(mlflow_bin), "models", "serve", "-m", f"runs:/{out.mlflow_run_id}/model",
                       "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                      f"http://127.0.0.1:{port}/ping", timeout_s=180, env=env):
        columns = [*meta.dense_features, *meta.sparse_features]
        data = [[v if v != "" else None for v in _raw_fields(meta, rows, i)] for i in range(25)]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"dataframe_split": {"columns": columns, "data": data}}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            served = [p["score"] for p in json.loads(r.read())["predictions"]]
        # what the model cannot score is a 400 whose message names the column and row (was: 200 {"score": NaN},
        # and the JSON number 12345 read as hex 0x12345)
        d1, c3 = columns.index("I2"), columns.index("C3")
        for change, said in (((0, d1, "Infinity"), "column I2, row 0"), ((1, c3, 12345), "column C3, row 1")):
            bad = [list(r) for r in data[:2]]
            bad[change[0]][change[1]] = change[2]
            body = json.dumps({"dataframe_split": {"columns": columns, "data": bad}}).replace('"Infinity"', "Infinity")
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                    headers={"Content-Type": "application/json"}), timeout=60)
            assert e.value.code == 400 and said in json.loads(e.value.read())["message"]
    model = ServedModel.load(_export(out, tmp_path))
    dense = np.stack([rows[c] for c in meta.dense_features], axis=1).astype(np.float32)
    raw = np.stack([rows[c] for c in meta.sparse_features]).astype(np.int64)
    np.testing.assert_allclose(served, model.score(dense, raw), atol=1e-5)


def _export(out, tmp_path: Path) -> Path:
    d = tmp_path / "exported"
    assert main(["export", "--checkpoint", out.checkpoint_path, "--out", str(d)]) == 0
    return d


def test_hot_lists_cafe_hot_ids_with_the_raw_values_the_data_holds(tracked, capsys):
    _, out, _ = tracked
    assert main(["hot", "--checkpoint", out.checkpoint_path, "--top", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "hot ids of" in lines[0]
    train = pq.read_table(f"{_data(out)}/train").to_pydict()
    emb = load_trained(out.checkpoint_path).model.embedding
    checked, feature = 0, None
    for line in lines[1:]:
        if not line.startswith(" "):
            feature = line.split(":")[0]
            continue
        raw_text, rest = line.split("  key ")
        key = int(rest.split()[0].replace(",", ""))
        since = int(rest.split("since step ")[1].replace(",", ""))  # a step a version was applied at
        assert since <= out.steps and (since - 3) % 10 == 0, line  # sync_interval 10, sync_lag 2, applied a step after
        want = raw_text.strip()
        value = MISSING_ID if want == "(missing)" else int(want, 16)
        assert value in set(np.asarray(train[feature]).tolist()), (feature, want)  # a value the data holds
        assert int(emb.key_of(feature, [value])) == key, (feature, want, key)  # and the one behind the key
        checked += 1
    assert checked > 0
