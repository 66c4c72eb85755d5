"""``cafe-dist hot``: which ids CAFE decided matter, per feature, as raw values a person can look up."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from cafe_dist.config import ConfigError
from cafe_dist.data import storage
from cafe_dist.data.formats import format_of
from cafe_dist.embeddings.registry import REGISTRY
from cafe_dist.serving.export import load_trained

SCAN_ROWS = 1 << 20  # train rows read to name the raw value behind each hot key


def describe_hot(checkpoint: str, top: int = 20) -> str:
    """The hot ids at ``checkpoint`` (or a run directory's newest one), strongest first per feature:
    raw value (hex for Criteo), its key, rank 0's sketch score, and since when it is hot: the
    training step after which the version that promoted it was applied (the coordinator records each
    hot id's version; version v is learned after step v x sync_interval + sync_lag and applied, rows
    and map, after the next one: cafe_dist.embeddings.cafe.schedule). A key is a hash of
    the raw value, so the value is found by hashing those of the dataset's first train rows (hot
    values are frequent: they are there unless the data changed)."""
    trained = load_trained(checkpoint)
    emb = trained.model.embedding
    if not emb.keeps_hot_set:
        having = ", ".join(m for m, cls in REGISTRY.items() if cls.keeps_hot_set)
        raise ConfigError(f"{trained.info['method']} keeps no hot set; `hot` lists those of {having}")
    hot = emb.hot_ids()
    names = list(trained.meta.sparse_features)
    fmt = format_of(trained.meta)
    since = _since_steps(trained, emb.hot_map.keys.to(torch.int64).numpy())
    found = _raw_values(trained, hot)

    def raw(key: int) -> str:
        return fmt.show(found[key]) if key in found else "(not in the first train rows)"

    lines = [f"{trained.path}: step {trained.manifest['step']}, hot map version {emb.hot_map.version}, "
             f"{len(hot['key']):,} hot ids of {emb.hot_rows:,} slots"]
    for f in names:
        mine = np.flatnonzero(hot["feature"] == f)
        if not len(mine):
            continue
        lines.append(f"{f}: {len(mine):,} hot")
        for j in mine[np.argsort(-hot["score"][mine], kind="stable")][:top]:
            when = f"since step {since[j]:,}" if since[j] >= 0 else "since ?"
            lines.append(f"  {raw(int(hot['key'][j])):>26s}  key {int(hot['key'][j]):>13,d}  "
                         f"score {hot['score'][j]:10.2f}  {when}")
    return "\n".join(lines)


def _raw_values(trained, hot: dict[str, np.ndarray]) -> dict[int, int]:
    """Hot key -> the raw value behind it, from the run's dataset's first ``SCAN_ROWS`` train rows
    ({} when that dataset is gone)."""
    wanted = sorted(set(hot["feature"].tolist()))
    try:
        files = storage.list_files(storage.join(trained.info["data_dir"], "train"), ".parquet") if wanted else []
    except OSError:
        return {}
    columns: dict[str, list[np.ndarray]] = {f: [] for f in wanted}
    rows = 0
    for path in files:
        try:
            with storage.open_input_file(path) as f:
                table = pq.read_table(f, columns=wanted)
        except (OSError, ValueError):
            return {}
        for f in wanted:
            columns[f].append(table.column(f).to_numpy()[:SCAN_ROWS - rows])
        rows += table.num_rows
        if rows >= SCAN_ROWS:
            break
    out: dict[int, int] = {}
    emb = trained.model.embedding
    for f, parts in columns.items():
        if not parts:
            continue
        raw = pd.unique(np.concatenate(parts))
        keys = emb.key_of(f, torch.from_numpy(raw.astype(np.int64))).numpy()
        hit = np.isin(keys, hot["key"][hot["feature"] == f])
        out.update(zip(keys[hit].tolist(), raw[hit].tolist()))
    return out


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
    return np.where(version > 0, version * opts.sync_interval + opts.sync_lag + 1, -1)
