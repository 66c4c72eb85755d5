"""Elastic resume's pieces without Ray: who trains which batch, the rows digest, and how the old
ranks' local states become a new rank's (CAFE: the sketches merged)."""

from __future__ import annotations

import pytest
import torch

from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.train.elastic import merge_states, owns, rows_digest, steps_left


def test_ranks_take_every_batch_after_the_resume_point_once():
    batches, start = 53, 12  # 12 batches trained (say by 2 ranks in 6 steps), then 3 ranks
    taken = [[g for g in range(batches) if owns(g, start, r, 3)] for r in range(3)]
    steps = steps_left(batches * 100, 100, start, 3)
    assert steps == 13  # 41 batches left: 13 whole steps of 3, 2 batches dropped (as drop_last)
    trained = sorted(g for t in taken for g in t[:steps])
    assert trained == list(range(start, start + 3 * steps))  # a prefix, each batch once


def test_the_rows_digest_adds_up_and_sees_a_repeat():
    assert rows_digest(0, 1000) == (rows_digest(0, 400) + rows_digest(400, 1000)) % 2**64
    assert rows_digest(0, 1000) != (rows_digest(0, 500) + rows_digest(499, 1000)) % 2**64  # row 499 twice
    assert rows_digest(0, 1000) != rows_digest(1, 1001)


def _cafe():
    feats = [FeatureSpec(f"C{i}", 5000) for i in range(4)]
    return build_embedding("cafe", feats, 16, 20.0, options={"hash_fraction": 0.5})


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
