"""What a careless or hostile user tried (issue 31): nothing of theirs overwritten, no NaN run
called done, and every refusal a sentence (exit status 2), not a traceback. Real files, a real
small and a real read-only file system (tmpfs), real trained checkpoints, a real MLflow store."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import tmpfs
from mlflow.tracking import MlflowClient

from cafe_dist.cli import main
from cafe_dist.config import ConfigError, load_config
from cafe_dist.data.formats.criteo import CRITEO
from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.errors import BadInputError, DivergedError
from cafe_dist.train.launcher import run_training


def _cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse's own refusals: a usage line and the reason, status 2
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err


@pytest.fixture(scope="module")
def model(tracked, tmp_path_factory) -> Path:
    _, out, _ = tracked
    d = tmp_path_factory.mktemp("hostile") / "model"
    assert main(["export", "--checkpoint", out.checkpoint_path, "--out", str(d)]) == 0
    return d


def _tsv(tracked, path: Path, bad_line: bool = False) -> Path:
    """Ten raw Criteo lines of the tracked run's test split (and one malformed line)."""
    from test_serving import _raw_fields, _test_rows

    meta, rows = _test_rows(tracked[1].data_path, 10)
    lines = ["\t".join([str(int(rows["label"][i]))] + [str(v) for v in _raw_fields(meta, rows, i)]) for i in range(10)]
    if bad_line:
        lines.insert(3, "1\tnot\ta\tcriteo\tline")
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- 1. predict --out and evaluate --output-json overwrite nothing --------------------------------------------
def test_predict_never_writes_over_its_input_and_needs_overwrite_for_an_existing_file(tracked, model, tmp_path,
                                                                                     capsys):
    tsv = _tsv(tracked, tmp_path / "c500.tsv")
    before = tsv.read_bytes()
    for extra in ([], ["--overwrite"]):  # was: a Parquet file where the TSV was
        rc, err = _cli(capsys, "predict", "--model", str(model), "--input", str(tsv), "--out", str(tsv), *extra)
        assert rc == 2 and "is the input" in err and tsv.read_bytes() == before
    out = tmp_path / "scores.parquet"
    out.write_text("my notes\n")
    rc, err = _cli(capsys, "predict", "--model", str(model), "--input", str(tsv), "--out", str(out))
    assert rc == 2 and "exists; pass --overwrite" in err and out.read_text() == "my notes\n"
    # an earlier run's list of malformed lines goes when this input has none
    bad = _tsv(tracked, tmp_path / "bad.tsv", bad_line=True)
    assert _cli(capsys, "predict", "--model", str(model), "--input", str(bad), "--out", str(out), "--overwrite")[0] == 0
    assert (tmp_path / "scores.bad_rows.tsv").is_file()
    assert _cli(capsys, "predict", "--model", str(model), "--input", str(tsv), "--out", str(out), "--overwrite")[0] == 0
    assert pq.read_table(out).num_rows == 10 and not (tmp_path / "scores.bad_rows.tsv").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left beside


def test_evaluate_output_json_needs_overwrite_and_is_checked_before_scoring(tracked, model, tmp_path, capsys):
    data = tracked[1].data_path
    got = tmp_path / "eval.json"
    got.write_text("{}")
    rc, err = _cli(capsys, "evaluate", "--model", str(model), "--input", data, "--output-json", str(got))
    assert rc == 2 and "--output-json" in err and "exists; pass --overwrite" in err and got.read_text() == "{}"
    assert _cli(capsys, "evaluate", "--model", str(model), "--input", data, "--output-json", str(got),
                "--overwrite")[0] == 0
    assert json.loads(got.read_text())["rows"] > 0
    (tmp_path / "plain").write_text("x")
    rc, err = _cli(capsys, "evaluate", "--model", str(model), "--input", data, "--output-json",
                   str(tmp_path / "plain" / "e.json"))
    assert rc == 2 and "a part of its parent path is a file" in err


# ---- 3. a non-finite setting or loss -------------------------------------------------------------------------
def test_non_finite_settings_are_refused_up_front(tmp_path):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: x}\n")
    for bad in ("train.lr=inf", "train.lr=.nan", "train.embedding_lr=-.inf", "cafe.threshold=.inf",
                "embedding.compression_ratio=.inf"):
        with pytest.raises(ConfigError, match=rf"config key '{bad.split('=')[0]}'.*finite"):
            load_config(cfg, [bad])


def test_a_run_whose_loss_goes_non_finite_fails_in_mlflow_and_logs_no_model(ray_cluster, tiny_synth, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\n")
    job = load_config(cfg, ["train.batch_size=256", "train.max_steps=20", "train.lr=1e30", "ray.name=diverge",
                            f"ray.storage_path={tmp_path / 'runs'}", f"mlflow.tracking_uri={uri}",
                            "mlflow.experiment=diverge"])
    with pytest.raises(DivergedError, match=r"^training diverged: the loss is nan at step \d+ \(rank 0.*Lower "
                                            r"train.lr \(1e\+30\)"):
        run_training(job, tmp_path / "out.json")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("diverge").experiment_id])
    assert run.info.status == "FAILED" and "training diverged" in run.data.tags["error"]
    assert "final_auc" not in run.data.metrics and not client.list_artifacts(run.info.run_id, "model")
    assert not (tmp_path / "out.json").exists()
    assert not list((tmp_path / "runs" / "diverge").glob("checkpoint_step*_end"))  # nothing called done


# ---- 4. the served model refuses what it cannot score ---------------------------------------------------------
def _request(**columns) -> pd.DataFrame:
    """Two Criteo rows as a client sends them (numbers, hex strings, nulls), with ``columns`` changed."""
    base = {**{f"I{i}": [1.0, 2.0] for i in range(1, 14)}, **{f"C{i}": ["68fd1e64", None] for i in range(1, 27)}}
    base["I2"], base["C2"] = [3.0, None], ["80e26c9b", ""]
    return pd.DataFrame({**base, **columns})


@pytest.mark.parametrize("change, message", [
    ({"I2": [1.0, float("inf")]}, r"column I2, row 1: inf is not a finite number"),
    ({"I1": ["abc", 2.0]}, r"column I1, row 0: 'abc' is not a finite number"),
    ({"C2": ["80e26c9b", 12345]}, r"column C2, row 1: 12345 is a number, not a string"),
    ({"C1": ["68fd1e64", "nothex!"]}, r"column C1, row 1: bad hex value in C1: 'nothex!'"),
    ({"I3": [1.5, 2.0]}, r"column I3, row 0: bad integer in I3: '1.5'"),
])
def test_a_request_with_a_non_finite_or_mistyped_value_names_column_and_row(change, message):
    with pytest.raises(BadInputError, match=message):
        CRITEO.request_arrays(_request(**change))


def test_a_request_missing_a_column_or_rows_is_refused_with_a_sentence():
    with pytest.raises(BadInputError, match=r"the input lacks column\(s\) C2"):
        CRITEO.request_arrays(_request().drop(columns=["C2"]))
    with pytest.raises(BadInputError, match=r"holds no rows"):
        CRITEO.request_arrays(_request().iloc[:0])
    dense, raw = CRITEO.request_arrays(_request())  # nulls and "" are missing values, not errors
    assert np.isfinite(dense).all() and raw.shape == (26, 2) and raw[0].tolist() == [0x68FD1E64, MISSING_ID]
    assert dense[0, 0] == pytest.approx(np.log1p(1.0))  # log(1 + x), as conversion


# ---- 6. plan's flags --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--gpus-per-node", "0"], "must be at least 1"), (["--gpus-per-node", "-2"], "must be at least 1"),
    (["--world-size", "0"], "must be at least 1"), (["--world-size", "-1"], "must be at least 1"),
    (["--hbm-gb", "nan"], "finite number above 0"), (["--ratios", "0.5"], "at least 1"),
])
def test_plan_refuses_impossible_topologies_at_once(flags, message, tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: nowhere, profile: criteo-kaggle}\n")
    rc, err = _cli(capsys, "plan", "--config", str(cfg), *flags)
    assert rc == 2 and message in err


def test_plan_without_the_search_says_it_did_not_search(tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text("data: {path: nowhere, profile: criteo-kaggle}\nray: {num_workers: 2}\n")
    capsys.readouterr()
    assert main(["plan", "--config", str(cfg), "--no-min", "--ratios", "100", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "smallest world size that fits: not searched (--no-min)" in out and "none up to" not in out


# ---- the rest: a sentence, not a traceback ----------------------------------------------------------------------
def test_unknown_and_failed_runs_are_named(tracked, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked[0])
    for argv in (["export", "--run", "0123456789abcdef", "--out", str(tmp_path / "e")],
                 ["hot", "--run", "0123456789abcdef"],
                 ["predict", "--model", "runs:/0123456789abcdef/model", "--input", "x.tsv", "--out",
                  str(tmp_path / "p.parquet")]):
        rc, err = _cli(capsys, *argv)
        assert rc == 2 and "no MLflow run '0123456789abcdef' in" in err, argv
    other = f"sqlite:///{tmp_path / 'other.db'}"  # (the tracked run's store is shared by other tests)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    from cafe_dist.mlflow_store import open_store

    client, exp = open_store(other, "broken-runs")
    failed = client.create_run(exp, run_name="broken")
    client.set_terminated(failed.info.run_id, "FAILED")
    rc, err = _cli(capsys, "export", "--run", failed.info.run_id, "--out", str(tmp_path / "e"))
    assert rc == 2 and "is FAILED, not FINISHED" in err and not (tmp_path / "e").exists()


def test_a_bad_export_out_is_said_before_the_checkpoint_is_read(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    nowhere = str(tmp_path / "no-checkpoint")  # were --out checked after loading, this would be the error
    rc, err = _cli(capsys, "export", "--checkpoint", nowhere, "--out", str(tmp_path / "plain" / "m"))
    assert rc == 2 and "a part of its parent path is a file" in err
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        rc, err = _cli(capsys, "export", "--checkpoint", nowhere, "--out", str(ro / "m"))
        assert rc == 2 and "read-only file system" in err
        rc, err = _cli(capsys, "predict", "--model", nowhere, "--input", nowhere, "--out", str(ro / "p.parquet"))
        assert rc == 2 and "read-only file system" in err
        rc, err = _cli(capsys, "plan", "--config", nowhere, "--output-json", str(ro / "plan.json"))
        assert rc == 2 and "read-only file system" in err


def test_export_to_a_full_disk_says_so_and_leaves_nothing(tracked, tmp_path, capsys):
    with tmpfs(tmp_path / "small", "64k") as disk:
        rc, err = _cli(capsys, "export", "--checkpoint", tracked[1].checkpoint_path, "--out", str(disk / "m"))
        assert rc == 2 and "disk full while exporting" in err and not list(disk.iterdir())


def test_a_second_export_to_one_out_is_discarded_and_the_first_kept(tmp_path):
    from cafe_dist.serving.export import _publish

    first, second = tmp_path / "out", tmp_path / ".out.stage"
    first.mkdir()
    (first / "model.json").write_text("first")
    second.mkdir()
    (second / "model.json").write_text("second")
    with pytest.raises(BadInputError, match=r"appeared while this export ran"):
        _publish(second, first)
    assert (first / "model.json").read_text() == "first"


def test_export_after_the_data_was_regenerated_uses_the_runs_own_copy(tracked, tmp_path, capsys):
    """A run keeps its dataset's meta.json and list of values beside its checkpoints, so a data folder
    regenerated since changes nothing; a checkpoint without that copy is refused with the way out
    (was: a size-mismatch traceback from load_state_dict)."""
    run = tmp_path / "run"
    shutil.copytree(Path(tracked[1].checkpoint_path).parent, run)
    ckpt = run / Path(tracked[1].checkpoint_path).name
    data = tmp_path / "data"
    assert _cli(capsys, "data", "synth", "--rows", "3000", "--seed", "9", "--cardinality-scale", "0.001",
                "--out", str(data))[0] == 0
    manifest = json.loads((ckpt / "manifest-rank0.json").read_text())
    manifest["model"]["data_dir"] = str(data)  # the run's data directory, regenerated with another seed
    (ckpt / "manifest-rank0.json").write_text(json.dumps(manifest))
    assert _cli(capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"))[0] == 0
    from cafe_dist.serving.model import ServedModel
    from cafe_dist.serving.scoring import evaluate

    assert round(evaluate(ServedModel.load(tmp_path / "m"), tracked[1].data_path)["auc"], 4) == round(
        tracked[1].auc, 4)
    shutil.rmtree(run / "dataset")
    rc, err = _cli(capsys, "export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m2"))
    assert rc == 2 and "was regenerated or converted again since the run trained" in err
    assert not (tmp_path / "m2").exists()


def test_evaluate_on_unlabeled_rows_or_a_missing_split_and_a_zero_batch(tracked, model, tmp_path, capsys):
    data = tracked[1].data_path
    rc, err = _cli(capsys, "evaluate", "--model", str(model), "--input", data, "--split", "valid")
    assert rc == 2 and "'valid' split does not exist; splits with rows: train" in err
    rc, err = _cli(capsys, "evaluate", "--model", str(model), "--input", data, "--batch-size", "0")
    assert rc == 2 and "--batch-size: must be at least 1" in err
    unlabeled = tmp_path / "unlabeled.tsv"
    unlabeled.write_text("\n".join("\t".join(line.split("\t")[1:]) for line in
                                   _tsv(tracked, tmp_path / "l.tsv").read_text().splitlines()) + "\n")
    rc, err = _cli(capsys, "evaluate", "--model", str(model), "--input", str(unlabeled))
    assert rc == 2 and "have no click labels" in err and "cafe-dist predict" in err


def test_a_damaged_export_names_the_file(model, tmp_path, capsys):
    for name, damage in (("weights.pt", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
                         ("model.json", lambda p: p.write_text(p.read_text()[:-40]))):
        copy = tmp_path / f"m-{name}"
        shutil.copytree(model, copy)
        damage(copy / name)
        rc, err = _cli(capsys, "predict", "--model", str(copy), "--input", str(copy), "--out",
                       str(tmp_path / f"{name}.parquet"))
        assert rc == 2 and f"{copy / name} cannot be read" in err and "export the run again" in err


def test_a_storage_path_that_is_a_file_is_refused_before_training(tiny_synth, tmp_path, capsys):
    (tmp_path / "runs").write_text("not a directory")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\nmlflow: {{enabled: false}}\n")
    rc, err = _cli(capsys, "train", "--config", str(cfg), "--set", f"ray.storage_path={tmp_path / 'runs'}")
    assert rc == 2 and f"ray.storage_path {tmp_path / 'runs'} is a file" in err


def test_synth_row_counts_are_checked(tmp_path, capsys):
    out = str(tmp_path / "s")
    rc, err = _cli(capsys, "data", "synth", "--rows", "0", "--out", out)
    assert rc == 2 and "--rows: must be at least 1" in err
    rc, err = _cli(capsys, "data", "synth", "--rows", "1", "--out", out)
    assert rc == 2 and "rounds to no test rows; give at least 4 rows" in err and not Path(out).exists()
    rc, err = _cli(capsys, "data", "synth", "--rows", str(10**15), "--out", out)
    assert rc == 2 and "GB while writing" in err and "GB free" in err and not Path(out).exists()


def test_a_test_fraction_that_leaves_no_training_rows_is_refused(tmp_path, capsys):
    rc, err = _cli(capsys, "data", "synth", "--rows", "2000", "--test-fraction", "0.9999999", "--out",
                   str(tmp_path / "s"))
    assert rc == 2 and "leaves none of the 2,000 rows for training" in err and not (tmp_path / "s").exists()


def test_a_profile_that_is_not_one_is_named(tmp_path, capsys):
    other = tmp_path / "meta.json"
    other.write_text(json.dumps({"format": "criteo", "rows": {"train": 1}}))
    rc, err = _cli(capsys, "data", "synth", "--rows", "100", "--profile", str(other), "--out", str(tmp_path / "s"))
    assert rc == 2 and f"{other} is not a generator profile" in err


def test_signatures_need_a_positive_sample(tiny_synth, capsys):
    for n in ("-1", "0"):
        rc, err = _cli(capsys, "data", "signatures", str(tiny_synth), "--sample-rows", n)
        assert rc == 2 and "--sample-rows: must be at least 1" in err


def test_overwrite_replaces_a_dataset_holding_its_own_lma_signatures(tmp_path, capsys):
    out = tmp_path / "s"
    assert _cli(capsys, "data", "synth", "--rows", "2000", "--cardinality-scale", "0.0001", "--out", str(out))[0] == 0
    assert _cli(capsys, "data", "signatures", str(out), "--sample-rows", "500")[0] == 0
    assert (out / "lma").is_dir()
    rc, err = _cli(capsys, "data", "synth", "--rows", "3000", "--cardinality-scale", "0.0001", "--out", str(out),
                   "--overwrite")
    assert rc == 0 and DatasetMeta.load(out).rows["train"] + DatasetMeta.load(out).rows["test"] == 3000
    assert not (out / "lma").exists()  # the old data's signatures went with it


def test_compare_needs_key_value_tags_and_an_existing_store(tmp_path, capsys):
    rc, err = _cli(capsys, "compare", "--tag", "sweep")
    assert rc == 2 and "expected KEY=VALUE" in err
    missing = tmp_path / "nope" / "mlflow.db"
    rc, err = _cli(capsys, "compare", "--tracking-uri", f"sqlite:///{missing}")
    assert rc == 2 and "no MLflow store at" in err and not missing.exists() and not missing.parent.exists()


def test_a_meta_json_claiming_more_rows_than_the_files_hold_is_refused(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    meta = json.loads((data / "meta.json").read_text())
    meta["rows"]["train"] += 1000
    (data / "meta.json").write_text(json.dumps(meta))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    job = load_config(cfg, ["mlflow.enabled=false", f"ray.storage_path={tmp_path / 'runs'}"])
    with pytest.raises(BadInputError, match=r"train: its Parquet files hold [\d,]+ rows but meta.json says"):
        run_training(job)


def test_model_downloads_from_mlflow_are_removed_after_use(tracked, tmp_path):
    import subprocess
    import sys

    uri, out, _ = tracked
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"MLFLOW_TRACKING_URI": uri, "TMPDIR": str(scratch), "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run([str(Path(sys.executable).parent / "cafe-dist"), "predict", "--model",
                        f"runs:/{out.mlflow_run_id}/model", "--input", out.data_path, "--out",
                        str(tmp_path / "p.parquet")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    # was: every runs:/ download left in /tmp (torch's own compile cache may stay)
    assert not list(scratch.rglob("model.json")) and not list(scratch.glob("cafe-dist-*"))


@pytest.mark.slow  # a real 2-worker elastic run stopped with Ctrl-C (~1.5 min)
def test_ctrl_c_of_an_elastic_run_says_so_and_leaves_no_temporary_folders(tiny_synth, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    scratch = Path(tempfile.mkdtemp(prefix="cd-", dir="/tmp"))  # short: Ray's socket paths live under TMPDIR
    runs = tmp_path / "runs"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\ntrain: {{batch_size: 128, epochs: 50}}\n"
                   f"ray: {{num_workers: 2, elastic: true, storage_path: {runs}, name: el}}\n"
                   f"checkpoint: {{every_steps: 10}}\nmlflow: {{tracking_uri: 'sqlite:///{tmp_path / 'm.db'}'}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TMPDIR": str(scratch)}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "cafe-dist"), "train", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while not list(runs.glob("el/checkpoint_step00000020")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, out[-3000:]
    assert out.rstrip().splitlines()[-1].startswith("cafe-dist: interrupted")  # the last word is ours
    # and no traceback of ours (Ray's own actors, killed by the abort, may still print theirs: issue 36's console)
    assert "Traceback" not in "\n".join(line for line in out.splitlines() if "pid=" not in line)
    assert not list(scratch.glob("cafe-dist-*")) and not list(scratch.glob("*/*.distcp"))
    shutil.rmtree(scratch, ignore_errors=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cafe-dist").experiment_id])
    assert run.info.status == "FAILED" and "interrupted" in run.data.tags["error"]
