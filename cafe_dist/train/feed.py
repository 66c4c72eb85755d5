"""Batches read, checked, collated and copied to the device ahead of the training loop.

A background thread does the input work of step t+1 while the loop runs step t: pyarrow's reads
and numpy's copies release the GIL, so on a machine with a core to spare the loop waits only when
the input is slower than the step. What a step records about its data (a CRC of its columns, the
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


class Feed:
    """Iterates ``Fed`` batches for ``plan`` (each item: the rows of one batch) in order."""

    def __init__(self, reader: RowReader, collate: Collator, device: torch.device,
                 plan: Iterable[list[Interval]], digests: bool = True, depth: int = DEPTH) -> None:
        self.reader, self.collate, self.device, self.digests = reader, collate, device, digests
        self.pin = device.type == "cuda"  # pinned host memory makes the copy asynchronous
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(plan),), daemon=True,
                                        name="cafe-dist-feed")
        self._thread.start()

    def _one(self, rows: list[Interval]) -> Fed:
        columns = self.reader.read(rows)
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

    def _put(self, item: object) -> bool:
        """Hand ``item`` to the loop; False once the loop has stopped taking them."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, plan: Iterator[list[Interval]]) -> None:
        try:
            for rows in plan:
                if not self._put(self._one(rows)):
                    return
        except BaseException as e:  # noqa: BLE001 (an I/O error: the loop raises it)
            self._put(e)
            return
        self._put(None)

    def __iter__(self) -> Iterator[Fed]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()  # it stops after the batch in hand
        self.reader.close()

    def __enter__(self) -> Feed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
