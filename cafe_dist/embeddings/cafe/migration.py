"""Promoted ids get their hot row: a copy of what they were reading, with fresh optimizer state.

Runs between steps, on :class:`TableRows`, so it works whichever rank holds a row (table-wise,
column-wise, row-wise or data-parallel shards): every rank makes the same calls in the same order.
"""

from __future__ import annotations

import torch

from cafe_dist.embeddings.cafe.layout import ROBE_TABLE, TABLE, CafeLayout
from cafe_dist.embeddings.table_rows import TableRows


def init_hot_rows(rows: TableRows, layout: CafeLayout, dim: int, keys: torch.Tensor, slots: torch.Tensor,
                  was_medium: torch.Tensor | None = None) -> None:
    """Each new hot row starts as the cold vector the id was reading: its hash row (plus, for ids
    that were medium, its second hash row), or its D/Z blocks of the robe array side by side; the
    optimizer's state for the hot row starts from zero."""
    fi = layout.feature_of_keys(keys)
    if layout.robe:
        got = rows.read([(ROBE_TABLE, layout.robe_row(keys, j)) for j in range(layout.blocks(dim))])
        values = torch.cat(got, dim=1)
        if was_medium is not None and bool(was_medium.any()):  # cafe_ml: plus its second row
            for i, name in enumerate(layout.compressed):
                m = ((fi == i) & was_medium).nonzero().squeeze(1)
                if m.numel():
                    values[m] += rows.read([(f"hash2_{name}", layout.hash2_row(name, keys[m]))])[0]
        _install(rows, layout.hot_row(slots), values)
        return
    requests, places = [], []
    for i, name in enumerate(layout.compressed):
        sel = (fi == i).nonzero().squeeze(1)
        if sel.numel() == 0:
            continue
        requests.append((TABLE, layout.hash_row(name, keys[sel])))
        places.append(sel)
        m = sel[was_medium[sel]] if was_medium is not None else sel[:0]
        if m.numel():
            requests.append((f"hash2_{name}", layout.hash2_row(name, keys[m])))
            places.append(m)
    values = torch.zeros((keys.numel(), dim), dtype=torch.float32)
    for place, got in zip(places, rows.read(requests)):
        values[place] += got
    _install(rows, layout.hot_row(slots), values)


def _install(rows: TableRows, at: torch.Tensor, values: torch.Tensor) -> None:
    rows.write(TABLE, at, values)
    rows.reset_state(TABLE, at)
