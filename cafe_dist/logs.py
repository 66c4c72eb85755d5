"""Keeping a library's own log lines out of the console while a call of ours runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(name: str, enabled: bool = True) -> Iterator[None]:
    """Only errors from logger ``name`` (and its children) inside the block; its level is restored after."""
    logger = logging.getLogger(name)
    level = logger.level
    if enabled:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
