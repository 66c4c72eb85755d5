"""Bad input gets a clear error that says what and where, before or during training, on real files
and (where the error can only surface in a worker) a real Ray run."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cafe_dist.batching import Collator
from cafe_dist.cli import main
from cafe_dist.config import ConfigError, load_config
from cafe_dist.data.schema import MISSING_ID, DatasetMeta
from cafe_dist.errors import BadInputError
from cafe_dist.train.launcher import run_training


@pytest.fixture
def data_copy(tiny_synth, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(tiny_synth, out)
    return out


def _job(tmp_path, data, *overrides):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    return load_config(cfg, ["train.batch_size=256", "train.max_steps=10", f"ray.storage_path={tmp_path / 'runs'}",
                             "mlflow.enabled=false", *overrides])


def _rewrite(split_dir, fn):
    """Rewrite the (first) Parquet file of a split through ``fn(table) -> table``."""
    path = sorted(split_dir.glob("*.parquet"))[0]
    pq.write_table(fn(pq.read_table(path)), path)
    return path


def test_a_missing_data_path_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no converted dataset \(no meta.json\).*cafe-dist data"):
        run_training(_job(tmp_path, tmp_path / "nowhere"))


def test_an_empty_split_directory_is_named(data_copy, tmp_path):
    for f in (data_copy / "test").glob("*.parquet"):
        f.unlink()
    with pytest.raises(BadInputError, match=r"data/test holds no Parquet files"):
        run_training(_job(tmp_path, data_copy))


def test_a_parquet_file_with_a_missing_column_is_named_with_the_column(data_copy, tmp_path):
    path = _rewrite(data_copy / "train", lambda t: t.drop_columns(["C7"]))
    with pytest.raises(BadInputError, match=rf"{path}: missing column\(s\) C7;"):
        run_training(_job(tmp_path, data_copy, "embedding.method=hash", "embedding.compression_ratio=10"))


def test_a_parquet_id_column_of_the_wrong_type_is_named(data_copy, tmp_path):
    col = "C3"
    path = _rewrite(data_copy / "test", lambda t: t.set_column(t.schema.get_field_index(col), col,
                                                                 pa.array(t[col].to_numpy().astype(str))))
    with pytest.raises(BadInputError, match=rf"{path}: id column 'C3' has type string, expected integers"):
        run_training(_job(tmp_path, data_copy))


def test_a_compression_ratio_that_cannot_be_met_is_refused_with_the_limit(data_copy, tmp_path):
    with pytest.raises(ConfigError, match=r"compression_ratio=1e\+06 cannot be met by method 'hash'.*"
                                          r"smallest form .* is [\d,.]+x"):
        run_training(_job(tmp_path, data_copy, "embedding.method=hash", "embedding.compression_ratio=1000000"))


def test_more_workers_than_the_cluster_has_is_refused_not_hung(ray_cluster, data_copy, tmp_path):
    # the session's cluster has 4 CPUs: a fifth worker would wait for one forever (was: a hang)
    with pytest.raises(ConfigError, match=r"ray.num_workers=5 needs 5 CPUs \(5 for the workers at "
                                          r"ray.cpus_per_worker=1\) but the Ray cluster has 4; .*at most 4 fit"):
        run_training(_job(tmp_path, data_copy, "ray.num_workers=5"))
    with pytest.raises(ConfigError, match=r"ray.use_gpu=true .* needs 1 GPUs but the Ray cluster has 0"):
        run_training(_job(tmp_path, data_copy, "ray.use_gpu=true"))


def test_the_cli_prints_the_message_and_exits_2(data_copy, tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data_copy}}}\nembedding: {{method: qr, compression_ratio: 1.0e+7}}\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "cannot be met by method 'qr'" in capsys.readouterr().err


def _collator(data):
    meta = DatasetMeta.load(data)
    return Collator(meta), pq.read_table(sorted((data / "train").glob("*.parquet"))[0]).slice(0, 64)


def _np(table):
    return {c: table[c].to_numpy() for c in table.column_names}


def test_a_batch_with_nan_dense_value_names_row_and_column(tiny_synth):
    collate, t = _collator(tiny_synth)
    batch = _np(t)
    batch["I5"] = batch["I5"].copy()
    batch["I5"][17] = np.inf
    with pytest.raises(BadInputError, match=r"row 17: dense column 'I5' is inf; dense values must be finite"):
        collate(batch)


def test_a_batch_with_an_out_of_range_id_names_row_column_and_range(tiny_synth):
    collate, t = _collator(tiny_synth)
    high = MISSING_ID + 1  # raw values: 32-bit ones, or the missing marker
    batch = _np(t)
    batch["C2"] = batch["C2"].copy()
    batch["C2"][40] = high + 3
    with pytest.raises(BadInputError, match=rf"row 40: id column 'C2' holds {high + 3}, outside \[0, {high}\)"):
        collate(batch)
    batch["C2"][40] = -1
    with pytest.raises(BadInputError, match=r"row 40: id column 'C2' holds -1"):
        collate(batch)


def test_a_label_that_is_not_0_or_1_is_named(tiny_synth):
    collate, t = _collator(tiny_synth)
    batch = _np(t)
    batch["label"] = batch["label"].astype(np.float32)
    batch["label"][3] = 0.5
    with pytest.raises(BadInputError, match=r"row 3: label is 0.5"):
        collate(batch)


@pytest.mark.slow  # a training run that fails mid-way (~50 s each)
@pytest.mark.parametrize("elastic, where", [
    (False, r"rows (0–255|256–511) of the split; below, the row within the batch"),  # rank r: the split's batch r
    (True, r"rows (0–255|256–511) of the split; below, the row within the batch"),  # the same deal when elastic
])
def test_nan_in_the_train_split_fails_the_run_naming_rank_step_and_column(ray_cluster, data_copy, tmp_path,
                                                                          elastic, where):
    """In a real 2-worker run the worker that meets the row stops the run; the message says where."""
    def poison(t):
        col = t["I2"].to_numpy().astype(np.float32)
        col[: len(col)] = np.nan  # every row: whichever rank reads it, its first batch is bad
        return t.set_column(t.schema.get_field_index("I2"), "I2", pa.array(col))

    _rewrite(data_copy / "train", poison)
    overrides = ["ray.num_workers=2"] + (["ray.elastic=true"] if elastic else [])
    with pytest.raises(Exception, match=rf"train split, rank \d, epoch 1, step 1 \({where}\): "
                                        r"row 0: dense column 'I2' is nan"):
        run_training(_job(tmp_path, data_copy, *overrides))


def test_nan_in_the_data_is_the_first_line_of_the_error_not_a_ray_wrapper(ray_cluster, data_copy, tmp_path):
    """Was: a 30-line WorkerGroupError with the row and column somewhere inside."""
    def poison(t):
        col = t["I4"].to_numpy().astype(np.float32)
        col[5] = np.nan
        return t.set_column(t.schema.get_field_index("I4"), "I4", pa.array(col))

    _rewrite(data_copy / "train", poison)
    with pytest.raises(BadInputError) as e:
        run_training(_job(tmp_path, data_copy))
    first = str(e.value).splitlines()[0]
    assert first.startswith("train split, rank 0, epoch 1, step 1 (rows 0–255 of the split; below, the row within "
                            "the batch): row 5: dense column 'I4' is nan"), first
