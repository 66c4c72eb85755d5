"""Batches read, checked, collated and copied to the device ahead of the training loop.

Background threads do the input work of the next steps while the loop runs this one: pyarrow's
reads and numpy's copies release the GIL, so on a machine with cores to spare the loop waits only
when the input is slower than the step. What a step records about its data (a CRC of its columns, the
digest of its rows) is computed there too. A batch that fails its checks travels as its error, so
the loop raises it at that step with the step's context. The thread stops when the loop stops
early (``max_steps``, a target AUC, an error): :meth:`Feed.close`."""

from __future__ import annotations

import queue
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cafe_dist.batching import Batch, Collator
from cafe_dist.data.reader import RowReader
from cafe_dist.errors import BadInputError
from cafe_dist.train.elastic import MASK, rows_digest
from cafe_dist.train.row_order import Interval

DEPTH = 3  # batches held ready: enough to cover a slow read, few enough to bound memory


@dataclass(frozen=True)
class Fed:
    """One batch as the loop gets it."""

    rows: list[Interval]  # the split's rows it holds, in order
    batch: Batch | None  # on the device; None when the batch failed its checks
    error: BadInputError | None = None
    crc: int = 0  # CRC32 of its columns as read
    digest: int = 0  # cafe_dist.train.elastic.rows_digest of its rows


def columns_crc(columns: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(columns):
        crc = zlib.crc32(np.ascontiguousarray(columns[name]).tobytes(), crc)
    return crc


class _End:
    """What a stage passes on after its last item (``error``: why it stopped early)."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Feed:
    """Iterates ``Fed`` batches for ``plan`` (each item: the rows of one batch) in order, through
    two background threads: one reads (pyarrow, mostly without the GIL), one checks, collates,
    digests and copies (numpy, zlib and the copy release it too), so on two cores the input runs
    at the rate of the slower of the two and the loop's own thread is free for the step."""

    def __init__(self, reader: RowReader, collate: Collator, device: torch.device,
                 plan: Iterable[list[Interval]], digests: bool = True, depth: int = DEPTH,
                 pin: bool | None = None) -> None:
        self.reader, self.collate, self.device, self.digests = reader, collate, device, digests
        # pinned host memory makes the copy asynchronous (``pin`` with a CPU ``device``: batches left
        # pinned on the host, for TorchRec's pipeline to copy on its own stream)
        self.pin = device.type == "cuda" if pin is None else pin
        self._read: queue.Queue = queue.Queue(maxsize=depth)
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._stage, args=(iter(plan), self._read_one, self._read), daemon=True,
                             name="cafe-dist-feed-read"),
            threading.Thread(target=self._stage, args=(self._items(self._read), self._prepare, self._ready),
                             daemon=True, name="cafe-dist-feed"),
        ]
        for t in self._threads:
            t.start()

    def _read_one(self, rows: list[Interval]) -> tuple[list[Interval], dict[str, np.ndarray]]:
        return rows, self.reader.read(rows)

    def _prepare(self, item: tuple[list[Interval], dict[str, np.ndarray]]) -> Fed:
        rows, columns = item
        crc = columns_crc(columns) if self.digests else 0
        digest = 0
        if self.digests:
            for a, b in rows:
                digest = (digest + rows_digest(a, b)) & MASK
        try:
            batch = self.collate(columns)
        except BadInputError as e:
            return Fed(rows, None, e, crc, digest)
        if self.pin:
            batch = batch.pinned()
        return Fed(rows, batch.to(self.device), None, crc, digest)

    def _put(self, q: queue.Queue, item: object) -> bool:
        """Hand ``item`` on; False once the loop has stopped taking them."""
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _items(self, q: queue.Queue) -> Iterator:
        """What the stage before hands on, until its end (raising what stopped it)."""
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    def _stage(self, source: Iterator, work, out: queue.Queue) -> None:
        try:
            for item in source:
                if not self._put(out, work(item)):
                    return
        except BaseException as e:  # noqa: BLE001 (an I/O error, a bug: the loop raises it)
            self._put(out, _End(e))
            return
        self._put(out, _End())

    def __iter__(self) -> Iterator[Fed]:
        return self._items(self._ready)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()  # each stops after the item in hand
        self.reader.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
