"""The one progress bar for work counted in rows (conversion, generation, sampling, scoring): on
stderr, so stdout stays for results, in thousands/millions, redrawn at most once a second."""

from __future__ import annotations

import sys

from tqdm import tqdm


def row_bar(desc: str, total: int | None = None, *, enabled: bool = True, leave: bool = True) -> tqdm:
    return tqdm(total=total, desc=desc, unit="row", unit_scale=True, file=sys.stderr, disable=not enabled,
                leave=leave, mininterval=1.0)
