"""Elastic resume's pieces without Ray: the rows digest, and how the old ranks' local states become
a new rank's (CAFE: the sketches merged). Who trains which rows: tests/unit/test_row_order.py."""

from __future__ import annotations

import pytest
import torch

from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.train.elastic import merge_states, rows_digest
from tests.values import ids_as_values


def test_the_rows_digest_adds_up_and_sees_a_repeat():
    assert rows_digest(0, 1000) == (rows_digest(0, 400) + rows_digest(400, 1000)) % 2**64
    assert rows_digest(0, 1000) != (rows_digest(0, 500) + rows_digest(499, 1000)) % 2**64  # row 499 twice
    assert rows_digest(0, 1000) != rows_digest(1, 1001)


def _cafe():
    feats = [FeatureSpec(f"C{i}", 5000) for i in range(4)]
    return ids_as_values(build_embedding("cafe", feats, 16, 20.0, options={"hash_fraction": 0.5}))


def test_cafe_merges_every_old_sketch_into_each_new_rank_at_its_share():
    old = [_cafe() for _ in range(2)]
    ids = [torch.tensor([7, 7, 7, 7, 9, 11]), torch.tensor([7, 7, 9, 9, 9, 13])]
    for emb, i in zip(old, ids):
        emb.sketch.insert(i)
    states = [{"embedding": e.local_state(), "progress": {"rows_digest": 5 + r, "data_digest": 100 + r},
               "rng": {"r": r}, "coordinator": {"v": 1}} for r, e in enumerate(old)]
    new = _cafe()
    for rank in range(3):
        merged = merge_states(states, rank, 3, new)
        new.load_local_state(merged["embedding"])
        got = new.sketch.scores(torch.tensor([7, 9, 11, 13])).tolist()
        assert got == pytest.approx([6 / 3, 4 / 3, 1 / 3, 1 / 3])  # the global score, over 3 workers
        assert merged["coordinator"] == {"v": 1} and merged["rng"] == {"r": rank % 2}
        assert merged["progress"]["rows_digest"] == (11 if rank == 0 else 0)  # summed once, by rank 0
