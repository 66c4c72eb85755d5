"""Where CAFE puts each id: the tables' layout and the global sketch key of an id.

Hot rows come first in table ``cafe`` (``[0, hot_rows)``, shared by every compressed feature). The
cold tier is either each compressed feature's hash rows, after the hot rows in the same table
(``cold: hash``), or one ROBE-Z array ``cafe_robe`` of width Z that cold ids read D/Z blocks of
(``cold: robe``). ``cafe_ml`` adds a second hash table per feature.

Under row-wise sharding TorchRec cuts a table into contiguous blocks, one per rank. The merger gives
the strongest ids the lowest slots, so hot slots in the first rows would put the busiest rows all on
rank 0. The ``cafe`` table's rows are therefore spread (``spread``): logical row ``l`` (hot slots
first, then the hash rows, as above) lives at physical row ``l * A mod rows``, with ``A`` the
integer nearest ``rows / golden ratio**2`` that is coprime with ``rows``: a bijection, and the hot
slots' positions form a golden-ratio (Kronecker) sequence, so every prefix of the slots, strongest
first, spreads evenly over any number of contiguous blocks. The layout does not depend on the world
size, so checkpoints reshard freely. ``spread: False`` keeps logical = physical (checkpoints and
exports written before the spread).

A (feature, raw value) pair has one global key, which the sketch, the coordinator, the hot map and
the cold rows use: the feature's offset plus a hash of the value into the feature's key space. The
31-bit key space (the sketch's cells hold 31-bit ids) is shared in proportion to cardinality, so a
feature gets about 2**31 / (all distinct values) keys per value: two values of one key count and
share as one, which at CriteoTB's 188 M values happens to about 1 value in 20, almost always a
rare one (a hot row's key drawing a rare value along costs nothing that matters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

from cafe_dist.embeddings.cafe.sketch import MAX_ID
from cafe_dist.embeddings.hashing import hash_mod

TABLE = "cafe"  # hot rows first, then (cold: hash) each compressed feature's hash rows
ROBE_TABLE = "cafe_robe"  # cold: robe, the shared array (rows of width Z)
SECOND_SEED = 7  # hash seed of cafe_ml's second tables
KEY_SEED = 11  # hash seed of a value's key within its feature's key space
SPREAD = (3 - math.sqrt(5)) / 2  # 1 / golden ratio**2: the stride of the spread, as a share of the rows


def spread_row(logical, stride: int, rows: int):
    """Physical row of each logical row (a tensor or an array) under the spread of ``rows`` rows with
    multiplier ``stride`` (1: none)."""
    return logical if stride == 1 else logical * stride % rows


def spread_stride(rows: int) -> int:
    """The multiplier ``A`` of the spread over ``rows`` rows (coprime with it: a bijection)."""
    if rows <= 2:
        return 1
    a = max(1, round(rows * SPREAD))
    while math.gcd(a, rows) != 1:
        a += 1
    return a


@dataclass(frozen=True)
class CafeLayout:
    compressed: tuple[str, ...]  # compressed features, in input order
    hot_rows: int
    hash_rows: dict[str, int]  # rows of each compressed feature's hash segment
    hash2_rows: dict[str, int]  # cafe_ml: rows of each feature's second hash table ({} for cafe)
    key_offset: dict[str, int]  # first global key of each compressed feature
    key_space: dict[str, int]  # keys of each compressed feature (its values hash into them)
    hash_base: dict[str, int]  # first row of each feature's hash segment in the table
    robe_rows: int = 0  # cold: robe, rows of the shared array (0: cold ids use hash rows)
    z: int = 0  # cold: robe, block width
    stride: int = 1  # the spread's multiplier A over the ``cafe`` table's rows (1: logical = physical)

    @classmethod
    def plan(cls, cardinalities: dict[str, int], hot_rows: int, hash_rows: dict[str, int],
             hash2_rows: dict[str, int], robe_rows: int = 0, z: int = 0, spread: bool = True) -> CafeLayout:
        """Lay out ``hash_rows`` after ``hot_rows`` (spread over the table's rows unless ``spread`` is
        False) and share the key space among ``cardinalities`` (compressed features, in order) in
        proportion to them."""
        total = max(sum(cardinalities.values()), 1)
        key_offset, key_space, hash_base, key, base = {}, {}, {}, 0, hot_rows
        for name, cardinality in cardinalities.items():
            key_space[name] = max(1, MAX_ID * cardinality // total)
            key_offset[name], key = key, key + key_space[name]
            hash_base[name], base = base, base + hash_rows.get(name, 0)
        stride = spread_stride(base) if spread else 1
        return cls(tuple(cardinalities), hot_rows, dict(hash_rows), dict(hash2_rows), key_offset, key_space,
                   hash_base, robe_rows, z, stride)

    @cached_property
    def table_rows(self) -> int:
        """Rows of the ``cafe`` table: the hot rows and every feature's hash rows."""
        return self.hot_rows + sum(self.hash_rows.values())

    @cached_property
    def _inverse_stride(self) -> int:
        """The spread's multiplier back (``stride``'s inverse modulo the rows), computed once."""
        return 1 if self.stride == 1 else pow(self.stride, -1, self.table_rows)

    def row(self, logical: torch.Tensor) -> torch.Tensor:
        """Physical row of the ``cafe`` table holding each logical row (hot slot or hash row)."""
        return spread_row(logical, self.stride, self.table_rows)

    def logical(self, physical: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`row`."""
        return spread_row(physical, self._inverse_stride, self.table_rows)

    def hot_row(self, slots: torch.Tensor) -> torch.Tensor:
        """Physical row of each hot slot."""
        return self.row(slots)

    def key(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Global keys of raw values ``ids`` of ``feature``."""
        return self.key_offset[feature] + hash_mod(ids, self.key_space[feature], seed=KEY_SEED)

    @property
    def robe(self) -> bool:
        return self.robe_rows > 0

    def blocks(self, dim: int) -> int:
        return dim // self.z if self.robe else 0

    def robe_row(self, keys: torch.Tensor, block: int) -> torch.Tensor:
        """Row of ``cafe_robe`` holding block ``block`` of the cold vector of each global key."""
        return hash_mod(keys, self.robe_rows, seed=block)

    def hash_row(self, feature: str, keys: torch.Tensor) -> torch.Tensor:
        """Row of the ``cafe`` table that cold global ``keys`` of ``feature`` share."""
        return self.row(self.hash_base[feature] + hash_mod(keys, self.hash_rows[feature]))

    def hash2_row(self, feature: str, keys: torch.Tensor) -> torch.Tensor:
        """cafe_ml: row of ``hash2_<feature>`` that medium global ``keys`` add in."""
        return hash_mod(keys, self.hash2_rows[feature], seed=SECOND_SEED)

    def feature_of_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Index into ``compressed`` of each global key's feature."""
        starts = torch.tensor([self.key_offset[n] for n in self.compressed], dtype=torch.int64)
        return torch.searchsorted(starts, keys, right=True) - 1
