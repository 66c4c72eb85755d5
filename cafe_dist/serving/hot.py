"""``cafe-dist hot``: which ids CAFE decided matter, per feature, as raw values a person can look up."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from cafe_dist.config import ConfigError
from cafe_dist.data import storage
from cafe_dist.data.schema import MISSING_ID, VOCAB_FILE
from cafe_dist.serving.export import load_trained


def describe_hot(checkpoint: str, top: int = 20) -> str:
    """The hot ids at ``checkpoint`` (or a run directory's newest one), strongest first per feature:
    raw value (hex for Criteo), contiguous id and this rank's sketch score. When an id became hot is
    not recorded by the hot map, so it is not shown."""
    trained = load_trained(checkpoint)
    emb = trained.model.embedding
    if not hasattr(emb, "hot_ids"):
        raise ConfigError(f"{trained.info['method']} keeps no hot set; `hot` lists CAFE's (cafe, cafe_ml)")
    hot = emb.hot_ids()
    vocab = pq.read_table(storage.join(trained.info["data_dir"], VOCAB_FILE)).to_pydict()
    feature_of, values = np.asarray(vocab["feature"]), np.asarray(vocab["value"])
    names = list(trained.meta.sparse_features)
    per_feature = {f: values[feature_of == j] for j, f in enumerate(names)}
    hexa = trained.meta.format in ("criteo", "synth")

    def raw(feature: str, i: int) -> str:
        if i == 0:
            return "(rare, unseen or missing)"
        v = int(per_feature[feature][i - 1])  # an id is 1 + its value's position in the sorted vocabulary
        return "(missing)" if v == MISSING_ID else (f"{v:08x}" if hexa else str(v))

    lines = [f"{trained.path}: step {trained.manifest['step']}, hot map version {emb.hot_map.version}, "
             f"{len(hot['id']):,} hot ids of {emb.hot_rows:,} slots"]
    for f in names:
        mine = np.flatnonzero(hot["feature"] == f)
        if not len(mine):
            continue
        lines.append(f"{f}: {len(mine):,} hot")
        for j in mine[np.argsort(-hot["score"][mine], kind="stable")][:top]:
            lines.append(f"  {raw(f, int(hot['id'][j])):>26s}  id {int(hot['id'][j]):>9,d}  score {hot['score'][j]:10.2f}")
    return "\n".join(lines)
