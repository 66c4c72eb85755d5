"""Deterministic integer hashing in tensor ops, identical on CPU and CUDA and on every rank."""

from __future__ import annotations

import torch

_K1 = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed int64
_K2 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_K3 = -7723592293110705685  # 0x94D049BB133111EB
_POS = 0x7FFFFFFFFFFFFFFF


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic on negative values)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _int64(v: int) -> int:
    """``v`` modulo 2**64, as the signed int64 with the same bits."""
    v %= 2**64
    return v - 2**64 if v >= 2**63 else v


def hash64(ids: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """splitmix64 finaliser of ``ids + seed``: a non-negative int64 per id, well mixed in every bit."""
    x = ids.to(torch.int64) + _int64((seed + 1) * _K1)  # int64 tensor arithmetic wraps like uint64
    x = (x ^ _shr(x, 30)) * _K2
    x = (x ^ _shr(x, 27)) * _K3
    x = x ^ _shr(x, 31)
    return x & _POS


def hash_mod(ids: torch.Tensor, rows: torch.Tensor | int, seed: int = 0) -> torch.Tensor:
    """Row of each id in a table of ``rows`` rows (``rows`` may be a per-id tensor)."""
    return hash64(ids, seed) % rows
