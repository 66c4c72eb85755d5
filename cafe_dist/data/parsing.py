"""Vectorised validation and decoding of text columns (no Python loop per row).

Arrow string arrays are read straight from their buffers: hex for Criteo by one compiled pass over
the bytes, a 64-bit FNV-1a hash for Avazu's string fields over a (rows, width) byte matrix.
"""

from __future__ import annotations

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cafe_dist.data.schema import MISSING_ID

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i

_INT_RE = r"^-?[0-9]{1,18}$"


def _flat(arr: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return pc.cast(arr, pa.string())


def byte_matrix(arr: pa.Array, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (bytes[rows, width] zero padded, lengths[rows]) for a string array."""
    offsets, data = _buffers(arr)
    n = len(offsets) - 1
    lengths = np.diff(offsets).astype(np.int64)
    if width is None:
        width = int(lengths.max()) if n else 0
    width = max(width, 1)
    pos = offsets[:-1, None].astype(np.int64) + np.arange(width)
    inside = np.arange(width) < lengths[:, None]
    out = np.zeros((n, width), dtype=np.uint8)
    if data.size:
        out[inside] = data[pos[inside]]
    return out, lengths


def _buffers(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int32[n + 1], bytes) of a string array, nulls as empty strings."""
    arr = _flat(arr)
    if arr.null_count:
        arr = pc.fill_null(arr, "")
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=len(arr) + 1, offset=arr.offset * 4)
    data_buf = arr.buffers()[2]
    return offsets, np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)


@numba.njit(cache=True, boundscheck=False)
def _hex_kernel(offsets, data, table, missing, out, ok):  # pragma: no cover (compiled)
    """One pass over the bytes: a value per string, 4 bits a digit (the byte-matrix form this
    replaced spent 0.33 µs a value on temporaries; this one is a few ns)."""
    for i in range(out.shape[0]):
        a, b = offsets[i], offsets[i + 1]
        if b == a:
            out[i], ok[i] = missing, True
            continue
        v, good = 0, b - a <= 8
        for j in range(a, b):
            d = table[data[j]]
            if d == 255:
                good = False
                break
            v = v * 16 + d
        out[i], ok[i] = (v if good else 0), good


def parse_hex32(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Decode up-to-8-digit hex strings. Returns (values int64, ok bool); empty → MISSING_ID."""
    offsets, data = _buffers(arr)
    n = len(offsets) - 1
    values, ok = np.empty(n, np.int64), np.empty(n, np.bool_)
    _hex_kernel(offsets, data, _HEX, MISSING_ID, values, ok)
    return values, ok


def parse_int(arr: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode decimal integers. Returns (values int64, present bool, ok bool); empty is not an error."""
    arr = _flat(arr)
    present = pc.not_equal(pc.utf8_length(arr), 0).to_numpy(zero_copy_only=False)
    valid = pc.match_substring_regex(arr, _INT_RE).to_numpy(zero_copy_only=False)
    ok = valid | ~present
    cleaned = pc.if_else(pa.array(valid), arr, "0")
    values = pc.cast(cleaned, pa.int64()).to_numpy(zero_copy_only=False)
    return values, present & valid, ok


def hash_strings32(arr: pa.Array) -> np.ndarray:
    """Stable 32-bit id of each string (FNV-1a 64, folded); empty → MISSING_ID."""
    mat, lengths = byte_matrix(arr)
    h = np.full(len(lengths), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(mat.shape[1]):  # loop over byte positions (a handful), vectorised over rows
        live = j < lengths
        h = np.where(live, (h ^ mat[:, j].astype(np.uint64)) * prime, h)
    folded = ((h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))).astype(np.int64)
    folded[lengths == 0] = MISSING_ID
    return folded


def dense_transform(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    """DLRM's dense preprocessing: log(1 + x), with negatives and missing values mapped to 0."""
    x = np.where(present & (values > 0), values, 0).astype(np.float64)
    return np.log1p(x).astype(np.float32)
