"""Which rows each rank trains (cafe_dist.train.row_order) and reading them by address
(cafe_dist.data.reader): every row at most once, all but less than a round of batches, a resumed
deal that trains exactly what the uninterrupted one would, and each rank reading only its own row
groups."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cafe_dist.data.reader import RowReader, SplitFiles
from cafe_dist.train.elastic import per_worker_batch, rows_digest
from cafe_dist.train.row_order import Deal, eval_batches, join


def _rows(deal: Deal, rank: int, steps: range) -> np.ndarray:
    return np.concatenate([np.arange(a, b) for k in steps for a, b in deal.rows_of(rank, k)] or [np.zeros(0, int)])


def _trained(deal: Deal, steps: int) -> np.ndarray:
    return np.concatenate([_rows(deal, r, range(steps)) for r in range(deal.world)])


@pytest.mark.parametrize(("rows", "world", "batch", "row_group"),
                         [(10_000, 3, 100, 1000), (5300, 2, 100, 64), (70_001, 4, 256, 8192), (1000, 3, 128, 5000)])
def test_an_epoch_is_dealt_in_whole_batches_each_row_once(rows, world, batch, row_group):
    deal = Deal.epoch(rows, world, batch, row_group)
    assert deal.steps() == rows // batch // world  # as many steps as a split stream with drop_last
    trained = _trained(deal, deal.steps())
    assert len(trained) == len(np.unique(trained)) == deal.steps() * world * batch
    assert rows - len(trained) < world * batch  # fewer than a round of batches is dropped
    assert all(sum(b - a for a, b in deal.rows_of(r, k)) == batch for r in range(world) for k in range(deal.steps()))


def test_units_cover_whole_row_groups_and_keep_the_ranks_close_in_time():
    deal = Deal.epoch(1 << 20, 4, 8192, 65536)
    assert deal.unit == 65536  # eight batches: one row group each
    assert deal.rows_of(1, 0) == [(65536, 65536 + 8192)] and deal.rows_of(1, 8) == [(5 * 65536, 5 * 65536 + 8192)]
    # at every step the ranks' rows lie within one round of units (4 x 65,536 rows)
    for k in range(deal.steps()):
        starts = [deal.rows_of(r, k)[0][0] for r in range(4)]
        assert max(starts) - min(starts) < 4 * 65536


@pytest.mark.parametrize(("old", "new", "done"), [((3, 100), (2, 150), 15), ((2, 256), (3, 171), 20),
                                                  ((2, 64), (2, 64), 7), ((4, 50), (1, 200), 33)])
def test_a_resumed_deal_trains_the_rest_once_on_any_count(old, new, done):
    """A checkpoint after ``done`` steps of ``old`` (workers, batch) continues on ``new``: the rows it
    had not trained are dealt again; together the two segments train no row twice and drop less
    than a round of the new batches (plus, per old rank, less than a unit)."""
    rows, row_group = 20_000, 1000
    first = Deal.epoch(rows, *old, row_group)
    left = first.remaining(done)
    before = _trained(first, done)
    assert sum(b - a for a, b in left) == rows - len(before)
    assert not np.isin(np.concatenate([np.arange(a, b) for a, b in left]), before).any()
    second = Deal(left, *new, first.unit if new == old else Deal.epoch(rows, *new, row_group).unit)
    after = _trained(second, second.steps())
    both = np.concatenate([before, after])
    assert len(np.unique(both)) == len(both)
    assert rows - len(both) < new[0] * new[1] + old[0] * first.unit
    digest = sum(rows_digest(a, b) for a, b in join([(int(x), int(x) + 1) for x in both])) % 2**64
    assert digest == sum(rows_digest(int(x), int(x) + 1) for x in both) % 2**64


def test_the_same_deal_resumed_is_the_uninterrupted_one():
    deal = Deal.epoch(50_000, 3, 128, 4096)
    resumed = Deal(deal.intervals, deal.world, deal.batch, deal.unit)  # what the checkpoint keeps
    for r in range(3):
        assert [resumed.rows_of(r, k) for k in range(40, deal.steps())] == [deal.rows_of(r, k) for k in
                                                                           range(40, deal.steps())]


def test_the_elastic_global_batch_is_kept_to_the_row():
    assert per_worker_batch(2 * 256, 3) == 171 and per_worker_batch(512, 1) == 512


@pytest.mark.parametrize(("rows", "world", "batch"), [(1000, 3, 128), (14_000, 2, 4096), (7, 2, 4), (100, 1, 1000)])
def test_evaluation_reads_every_row_once_in_the_same_number_of_batches_per_rank(rows, world, batch):
    parts = [eval_batches(rows, world, r, batch) for r in range(world)]
    assert len({len(p) for p in parts}) == 1
    got = np.concatenate([np.arange(a, b) for p in parts for a, b in p])
    assert np.array_equal(np.sort(got), np.arange(rows))
    assert all(b - a <= batch for p in parts for a, b in p)


def _split(tmp_path, rows_per_file: list[int], row_group: int) -> SplitFiles:
    start = 0
    for i, n in enumerate(rows_per_file):
        idx = np.arange(start, start + n)
        pq.write_table(pa.table({"row": idx, "label": (idx % 2).astype(np.int8), "x": idx.astype(np.float32)}),
                       tmp_path / f"part-{i:05d}.parquet", row_group_size=row_group)
        start += n
    return SplitFiles.scan(str(tmp_path))


def test_the_reader_reads_any_rows_across_files_and_row_groups(tmp_path):
    split = _split(tmp_path, [2500, 1000, 3100], 1000)
    assert split.rows == 6600 and split.row_group_rows == 1000 and len(split.files) == 3
    reader = RowReader(split, ["row", "label"])
    for ranges in ([(0, 10)], [(990, 1010)], [(2400, 3600)], [(5, 7), (6000, 6600), (100, 101)], [(3499, 3500)]):
        got = reader.read(ranges)
        want = np.concatenate([np.arange(a, b) for a, b in ranges])
        assert np.array_equal(got["row"], want) and np.array_equal(got["label"], (want % 2).astype(np.int8))
        assert set(got) == {"row", "label"}  # only the columns asked for
    reader.close()


def test_each_rank_reads_only_its_own_row_groups(tmp_path):
    """Bytes read per rank: a quarter of the split each on 4 workers (the units cover whole row
    groups), where reading a stream and keeping every 4th batch read it all four times."""
    split = _split(tmp_path, [1 << 14] * 4, 2048)
    deal = Deal.epoch(split.rows, 4, 512, split.row_group_rows)
    read = []
    for rank in range(4):
        reader = RowReader(split, ["row", "label", "x"])
        for k in range(deal.steps()):
            got = reader.read(deal.rows_of(rank, k))
            assert np.array_equal(got["row"], np.concatenate([np.arange(a, b) for a, b in deal.rows_of(rank, k)]))
        read.append(reader.rows_read)
    assert read == [split.rows // 4] * 4
