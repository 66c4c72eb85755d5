"""Keeping a library's own log lines out of the console while a call of ours runs."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator

# a line of Ray's own C++ logging (core worker, raylet, GCS): "[2026-12-03 15:30:06,993 E 16534 16584] core_worker.cc:2465: ..."
RAY_INTERNAL_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] [\w./-]+\.cc:\d+: ")
# the raylet's note, pushed to the driver, that it started many worker processes: a sweep's trials
# (Ray Tune, each with its own Ray Train workers) start that many by design
RAYLET_WORKER_NOTE = re.compile(r"\d+ PYTHON worker processes have been started on node")


@contextlib.contextmanager
def quiet(name: str, enabled: bool = True, level: int = logging.ERROR) -> Iterator[None]:
    """Only records of ``level`` and above (default: errors) from logger ``name`` (and its children)
    inside the block; its level is restored after."""
    logger = logging.getLogger(name)
    before = logger.level
    if enabled:
        logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def drop_ray_internal_lines() -> None:
    """Ray forwards its processes' own C++ log lines to the driver's console with the workers' output
    (e.g. an error-level line about Ray Train's PreemptionWatcher actor at every run's start); keep
    them out (``--verbose`` shows them), everything else the workers print stays; and the raylet's
    note on started worker processes. Ray offers no setting for it: its console handler is wrapped
    in place (if Ray changes that, nothing is dropped)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    with dispatcher._lock:  # noqa: SLF001
        dispatcher.handlers = [(name, _without_ray_lines(h) if name == "ray_print_logs" else h)
                               for name, h in dispatcher.handlers]
    _drop_raylet_notes()


def _drop_raylet_notes() -> None:
    """The raylet's messages reach the console through Ray's ``print_to_stdstream`` (its error
    listener calls that module function directly, not the dispatcher): wrapped to drop the note on
    started worker processes; every other raylet message (an out-of-memory kill) still prints."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return
    printing = ray_worker.print_to_stdstream
    if getattr(printing, "drops_ray_lines", False):
        return

    def print_to_stdstream(data: dict, ignore_prefix: bool) -> None:
        kept = _without(data, RAYLET_WORKER_NOTE)
        if kept is not None:
            printing(kept, ignore_prefix)

    print_to_stdstream.drops_ray_lines = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = print_to_stdstream


def _without_ray_lines(handler: Callable) -> Callable:
    if getattr(handler, "drops_ray_lines", False):
        return handler

    def handle(data: dict) -> None:
        kept = _without(data, RAY_INTERNAL_LINE)
        if kept is not None:
            handler(kept)

    handle.drops_ray_lines = True  # type: ignore[attr-defined]
    return handle


def _without(data: dict, pattern: re.Pattern) -> dict | None:
    """``data`` (a batch of forwarded lines) without the lines ``pattern`` finds; None when every
    line it held was one (nothing to print)."""
    lines = [line for line in data.get("lines", []) if not pattern.search(line)]
    return {**data, "lines": lines} if lines or not data.get("lines") else None
