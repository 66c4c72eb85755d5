"""Does the hot set follow the drift? A probe for synthetic data, where the truth is known.

The generator knows each feature's most popular raw values at any row; the probe turns them into
CAFE's keys and asks the hot map which are hot. Right after a rotation the fraction drops (yesterday's
top ids are hot, today's are not); a working importance sketch brings it back up.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.synth import SynthGenerator, SynthSpec


class HotSetProbe:
    def __init__(self, data_path: str | Path, meta: DatasetMeta, emb, k: int = 5) -> None:
        spec = meta.extra["synth"]
        self.gen = SynthGenerator(SynthSpec(**{f.name: spec[f.name] for f in fields(SynthSpec) if f.name in spec}))
        self.emb = emb
        self.k = k
        self.features = [i for i, n in enumerate(meta.sparse_features)
                         if n in {f.name for f in emb.compressed}]

    @classmethod
    def maybe(cls, data_path: str | Path, meta: DatasetMeta, emb) -> HotSetProbe | None:
        if "synth" not in meta.extra or not emb.keeps_hot_set or not emb.compressed:
            return None
        return cls(data_path, meta, emb)

    def __call__(self, row: int) -> float:
        """Fraction of the current top-k ids of every compressed feature that are hot."""
        keys_t = self.top_keys(row, self.k)
        if keys_t.numel() == 0:
            return float("nan")
        return float((self.emb.hot_map.lookup(keys_t.to(self.emb.hot_map.device)) >= 0).float().mean())

    def oracle_coverage(self) -> float:
        """The share of compressed-feature lookups the true top ids would serve with CAFE's hot slots:
        what ``hot_coverage`` is measured against."""
        return self.gen.top_mass(self.features, int(self.emb.hot_rows))

    def hot_top_keys(self, row: int, k: int) -> list[list[int]]:
        """[key, popularity rank within its feature] of the true top-k keys at ``row`` that are hot."""
        keys = self.top_keys(row, k)
        ranks = torch.cat([torch.arange(n) for n in self._counts])
        hot = (self.emb.hot_map.lookup(keys.to(self.emb.hot_map.device)) >= 0).cpu()
        return torch.stack([keys[hot], ranks[hot]], dim=1).tolist()

    def top_keys(self, row: int, k: int) -> torch.Tensor:
        """Sketch keys of the true top-k ids of every compressed feature at ``row``."""
        keys, self._counts = [], []
        for i in self.features:
            raw = torch.from_numpy(self.gen.top_ids(i, row, k).astype("int64"))
            keys.append(self.emb.key_of(self.emb.names[i], raw))
            self._counts.append(int(raw.numel()))
        return torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64)
