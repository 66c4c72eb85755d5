"""Elastic resume's pieces without Ray: who trains which batch, the rows digest, and how the old
ranks' local states become a new rank's (CAFE: the sketches merged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.train.elastic import merge_states, owns, per_worker_batch, rebatch, rows_digest, steps_left
from tests.values import ids_as_values


def _stream(rows: int, size: int):
    """A train stream as Ray Data hands it out: column batches of ``size`` rows (the last shorter)."""
    for lo in range(0, rows, size):
        idx = np.arange(lo, min(lo + size, rows))
        yield {"row": idx, "label": (idx % 2).astype(np.float32)}


def test_ranks_take_every_row_after_the_resume_point_once_at_the_new_batch_size():
    rows, old_bs, done = 5300, 100, 1200  # 2 ranks of 100 trained 6 steps, then 3 ranks keep ~200 a step
    bs = per_worker_batch(2 * old_bs, 3)
    assert bs == 67  # 201 rows a step: the nearest whole split of the run's 200
    steps = steps_left(rows, bs, done, 3)
    assert steps == 20  # 4100 rows left: 61 whole batches of 67, 20 whole steps of 3
    taken = [[b["row"] for g, b in enumerate(rebatch(_stream(rows, old_bs), bs, done)) if owns(g, r, 3)][:steps]
             for r in range(3)]
    assert all(len(b) == bs for t in taken for b in t)
    trained = np.sort(np.concatenate([b for t in taken for b in t]))
    assert np.array_equal(trained, np.arange(done, done + 3 * steps * bs))  # a prefix of the rest, each row once


@pytest.mark.parametrize(("source", "size", "skip"), [(100, 100, 0), (100, 67, 1200), (64, 300, 5), (500, 7, 499)])
def test_rebatch_cuts_the_stream_again_from_any_row(source, size, skip):
    rows = 5300
    out = list(rebatch(_stream(rows, source), size, skip))
    assert [len(b["row"]) for b in out] == [size] * ((rows - skip) // size)  # whole batches only
    got = np.concatenate([b["row"] for b in out])
    assert np.array_equal(got, np.arange(skip, skip + len(got)))
    assert all(np.array_equal(b["label"], (b["row"] % 2).astype(np.float32)) for b in out)  # columns stay aligned


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
