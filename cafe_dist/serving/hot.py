"""``cafe-dist hot``: which ids CAFE decided matter, per feature, as raw values a person can look up."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import torch

from cafe_dist.config import ConfigError
from cafe_dist.data.formats import format_of
from cafe_dist.embeddings.registry import REGISTRY
from cafe_dist.serving.export import load_trained


def describe_hot(checkpoint: str, top: int = 20) -> str:
    """The hot ids at ``checkpoint`` (or a run directory's newest one), strongest first per feature:
    raw value (hex for Criteo), contiguous id, rank 0's sketch score, and since when it is hot: the
    training step at which the version that promoted it was applied (the coordinator records each
    hot id's version; version v applies at step v x sync_interval + sync_lag)."""
    trained = load_trained(checkpoint)
    emb = trained.model.embedding
    if not emb.keeps_hot_set:
        having = ", ".join(m for m, cls in REGISTRY.items() if cls.keeps_hot_set)
        raise ConfigError(f"{trained.info['method']} keeps no hot set; `hot` lists those of {having}")
    hot = emb.hot_ids()
    vocab = pq.read_table(trained.vocab).to_pydict()
    feature_of, values = np.asarray(vocab["feature"]), np.asarray(vocab["value"])
    names = list(trained.meta.sparse_features)
    per_feature = {f: values[feature_of == j] for j, f in enumerate(names)}
    fmt = format_of(trained.meta)
    since = _since_steps(trained, emb.hot_map.keys.to(torch.int64).numpy())

    def raw(feature: str, i: int) -> str:
        if i == 0:
            return "(rare, unseen or missing)"
        v = int(per_feature[feature][i - 1])  # an id is 1 + its value's position in the sorted vocabulary
        return fmt.show(v)

    lines = [f"{trained.path}: step {trained.manifest['step']}, hot map version {emb.hot_map.version}, "
             f"{len(hot['id']):,} hot ids of {emb.hot_rows:,} slots"]
    for f in names:
        mine = np.flatnonzero(hot["feature"] == f)
        if not len(mine):
            continue
        lines.append(f"{f}: {len(mine):,} hot")
        for j in mine[np.argsort(-hot["score"][mine], kind="stable")][:top]:
            when = f"since step {since[j]:,}" if since[j] >= 0 else "since ?"
            lines.append(f"  {raw(f, int(hot['id'][j])):>26s}  id {int(hot['id'][j]):>9,d}  "
                         f"score {hot['score'][j]:10.2f}  {when}")
    return "\n".join(lines)


def _since_steps(trained, keys: np.ndarray) -> np.ndarray:
    """Per hot key (in the hot map's order), the step its promotion was applied at; -1 when the
    checkpoint does not say. The coordinator's state can be a version or two ahead of the map the
    workers applied (rounds in flight): the promotions of its recent versions up to the map's come
    first, then the version each id still hot there entered at."""
    state = trained.coordinator or {}
    applied = trained.model.embedding.hot_map.version
    version = np.zeros(keys.size, np.int64)
    for update in sorted(state.get("updates", {}).values(), key=lambda u: -u.version):
        if update.version <= applied:
            hit = np.isin(keys, update.promoted_keys.numpy()) & (version == 0)
            version[hit] = update.version
    hot_keys, hot_since = state.get("hot_keys"), state.get("hot_since")
    if hot_keys is not None and hot_since is not None and len(hot_keys):
        pos = np.minimum(np.searchsorted(hot_keys, keys), hot_keys.size - 1)
        there = (hot_keys[pos] == keys) & (hot_since[pos] <= applied) & (version == 0)
        version[there] = hot_since[pos][there]
    opts = trained.options
    return np.where(version > 0, version * opts.sync_interval + opts.sync_lag, -1)
