"""No vocabulary: runs read raw values; full builds the vocabulary it needs; datasets and runs made
before raw ids keep working or are refused with the way out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cafe_dist.checkpoint_dirs import CheckpointError
from cafe_dist.config import ConfigError, load_config
from cafe_dist.data.schema import VALUES_FILE, VOCAB_FILE, VOCABULARY_DIR, DatasetMeta
from cafe_dist.data.vocabulary import read_values
from cafe_dist.serving.export import export_checkpoint
from cafe_dist.train.launcher import run_training


def _run(tmp: Path, data: Path, name: str, *overrides: str):
    job = load_config(None, [f"data.path={data}", f"ray.storage_path={tmp / 'runs'}", f"ray.name={name}",
                             "ray.num_workers=1", "train.batch_size=512", "train.max_steps=12",
                             "mlflow.enabled=false", *overrides])
    return run_training(job)


def _old_layout(new: Path, old: Path) -> None:
    """A dataset as the converter wrote it before raw ids: vocab.parquet (feature, value, count) in
    place of values.parquet, a ``<feature>_idx`` column per feature, no ``distinct_counted``."""
    shutil.copytree(new, old)
    meta = DatasetMeta.load(old)
    train = pq.read_table(old / "train", columns=meta.sparse_features)
    vocab = {f: np.unique(train.column(f).to_numpy(), return_counts=True) for f in meta.sparse_features}
    pq.write_table(pa.table({
        "feature": np.concatenate([np.full(len(vocab[f][0]), j, np.int16) for j, f in enumerate(meta.sparse_features)]),
        "value": np.concatenate([vocab[f][0] for f in meta.sparse_features]),
        "count": np.concatenate([vocab[f][1] for f in meta.sparse_features]).astype(np.int64)}), old / VOCAB_FILE)
    (old / VALUES_FILE).unlink()
    for split in ("train", "test"):
        for part in (old / split).glob("*.parquet"):
            t = pq.read_table(part)
            for f in meta.sparse_features:
                ids = np.searchsorted(vocab[f][0], t.column(f).to_numpy()) + 1
                t = t.append_column(f"{f}_idx", pa.array(ids.astype(np.int64)))
            pq.write_table(t, part)
    doc = json.loads((old / "meta.json").read_text())
    del doc["distinct_counted"]
    (old / "meta.json").write_text(json.dumps(doc))


def test_full_builds_its_capped_vocabulary_and_a_dataset_of_the_old_layout_still_trains(ray_cluster, tiny_synth,
                                                                                          tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    capped = _run(tmp_path, data, "capped", "embedding.method=full", "full.max_ids_per_feature=50",
                  "full.min_count=2")
    vocab = next((data / VOCABULARY_DIR).glob("*.parquet"))  # built for this run, kept for the next
    meta = DatasetMeta.load(data)
    listed = read_values(str(vocab), meta.sparse_features)
    assert all(len(v) <= 50 for v in listed.values()) and np.isfinite(capped.auc)
    run_values = tmp_path / "runs" / "capped" / "dataset" / VALUES_FILE  # the run's own copy of it
    assert pq.read_table(run_values).equals(pq.read_table(vocab))
    # a dataset converted with a vocabulary: its vocabulary is the values file, its _idx columns unread
    old = tmp_path / "old"
    _old_layout(tiny_synth, old)
    for method in ("hash", "full"):
        out = _run(tmp_path, old, f"old-{method}", f"embedding.method={method}", "embedding.compression_ratio=10")
        assert np.isfinite(out.auc) and 0.5 < out.auc < 1, method
    assert not (old / VOCABULARY_DIR).exists()  # full read vocab.parquet: nothing to build


def test_a_run_trained_on_vocabulary_ids_is_refused_for_resume_and_export(tracked, tiny_synth, tmp_path):
    out = tracked[1]
    run = tmp_path / "runs" / "before"
    shutil.copytree(Path(out.checkpoint_path).parent, run)
    ckpt = run / Path(out.checkpoint_path).name
    for manifest in ckpt.glob("manifest-rank*.json"):  # as cafe-dist wrote it before raw ids
        doc = json.loads(manifest.read_text())
        del doc["model"]["values"]
        del doc["config"]["data.ids"]
        manifest.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="trained on contiguous vocabulary ids"):
        export_checkpoint(str(ckpt), tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match=r"data.ids"):  # whatever else differs, this one cannot be forced
        _run(tmp_path, tiny_synth, "before", "embedding.method=cafe", "embedding.compression_ratio=100",
             "ray.num_workers=2", "ray.resume=force")
