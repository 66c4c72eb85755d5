"""One-core references for the benches: a rate per core is only comparable when the process and
every library pool in it are held to one CPU."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa


@contextmanager
def one_core() -> Iterator[int]:
    """This process on one CPU (yielded), Arrow's pools at one thread, and torch's too when it is
    loaded (its threads pinned to one core would spin against each other on small ops)."""
    before, threads = os.sched_getaffinity(0), (pa.cpu_count(), pa.io_thread_count())
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    cpu = sorted(before)[0]
    os.sched_setaffinity(0, {cpu})
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if torch is not None:
        torch.set_num_threads(1)
    try:
        yield cpu
    finally:
        pa.set_cpu_count(threads[0])
        pa.set_io_thread_count(threads[1])
        if torch is not None:
            torch.set_num_threads(torch_threads)
        os.sched_setaffinity(0, before)
