"""The background feed (cafe_dist.train.feed) and the converter's row groups: batches arrive in plan
order, checked and collated, with what a step records about them; a bad batch arrives as its error
at its place; stopping early stops the thread; parts are written in row groups of ROW_GROUP_ROWS
whatever the size of the chunks the parser hands over."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cafe_dist.batching import Collator
from cafe_dist.data.reader import RowReader, SplitFiles
from cafe_dist.data.schema import DatasetMeta
from cafe_dist.data.writer import ROW_GROUP_ROWS, PartSink, raw_schema
from cafe_dist.train.elastic import rows_digest
from cafe_dist.train.feed import Feed, columns_crc
from cafe_dist.train.row_order import Deal


def _feed(data: Path, plan, **kw) -> tuple[Feed, SplitFiles, Collator]:
    meta = DatasetMeta.load(data)
    split = SplitFiles.scan(str(data / "train"))
    collate = Collator(meta)
    return Feed(RowReader(split, collate.columns), collate, torch.device("cpu"), plan, **kw), split, collate


def test_batches_arrive_in_plan_order_collated_with_their_digests(tiny_synth):
    deal = Deal.epoch(DatasetMeta.load(tiny_synth).rows["train"], 2, 256, 1 << 16)
    plan = [deal.rows_of(1, k) for k in range(5)]
    feed, split, collate = _feed(tiny_synth, plan)
    reader = RowReader(split, collate.columns)
    with feed:
        got = list(feed)
    assert [f.rows for f in got] == plan
    for fed in got:
        want = reader.read(fed.rows)
        assert torch.equal(fed.batch.labels, torch.from_numpy(want["label"].astype(np.float32)))
        assert fed.batch.sparse.values()[:256].tolist() == want[collate.keys[0]].tolist()
        assert fed.crc == columns_crc(want) and fed.error is None
        assert fed.digest == sum(rows_digest(a, b) for a, b in fed.rows) % 2**64


def test_a_bad_batch_arrives_as_its_error_at_its_place(tiny_synth, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    path = sorted((data / "train").glob("*.parquet"))[0]
    t = pq.read_table(path)
    dense = t["I3"].to_numpy().astype(np.float32)
    dense[300] = np.nan  # in the second batch of 256
    pq.write_table(t.set_column(t.schema.get_field_index("I3"), "I3", pa.array(dense)), path)
    feed, _, _ = _feed(data, [[(0, 256)], [(256, 512)], [(512, 768)]])
    with feed:
        got = list(feed)
    assert got[0].error is None and got[2].error is None
    assert got[1].batch is None and "row 44: dense column 'I3' is nan" in str(got[1].error)


def test_stopping_early_stops_the_thread(tiny_synth):
    plan = ([(k * 8, k * 8 + 8)] for k in range(10_000))
    feed, _, _ = _feed(tiny_synth, plan, depth=2)
    first = next(iter(feed))
    assert first.rows == [(0, 8)]
    feed.close()
    assert not any(t.name.startswith("cafe-dist-feed") and t.is_alive() for t in threading.enumerate())


def test_a_read_error_is_raised_in_the_loop(tiny_synth):
    feed, _, _ = _feed(tiny_synth, [[(0, 8)], [(10**12, 10**12 + 8)]])
    with feed, pytest.raises(IndexError):
        list(feed)


@pytest.mark.parametrize("chunk", [1000, 70_000, ROW_GROUP_ROWS])
def test_parts_are_written_in_whole_row_groups_whatever_the_chunks(tmp_path, chunk):
    dense, sparse = ["I1"], ["C1", "C2"]
    sink = PartSink(tmp_path / "parts", tmp_path / "bad.tsv", raw_schema(dense, sparse), dense, sparse)
    rows = 2 * ROW_GROUP_ROWS + 123
    for lo in range(0, rows, chunk):
        n = min(chunk, rows - lo)
        sink.add_rows(np.zeros(n), np.zeros((n, 1), np.float32), np.arange(lo, lo + n)[:, None].repeat(2, 1))
    parts = sink.close()
    split = SplitFiles.scan(str(tmp_path / "parts"))
    assert split.rows == rows and len(parts) == 1
    assert np.diff(split.group_start).tolist() == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 123]
    assert np.array_equal(RowReader(split, ["C1"]).read([(0, rows)])["C1"], np.arange(rows))
