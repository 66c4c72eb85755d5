"""LMA (Desai, Chou, Shrivastava: "Semantically Constrained Memory Allocation (SCMA) for
Embedding in Efficient Recommendation Systems", the authors' LSH-based Memory Allocation): values
share memory in proportion to how much their semantic information overlaps.

A value's semantic set is the set of sampled training rows it appears in; two values that always
occur together have Jaccard similarity 1. Each embedding block j of a value is read from one shared
array (as in ROBE-Z, blocks of Z floats, so the lookup is a plain table row that DMP shards) at a
row given by a hash of K min-hashes of that set. Two values then read the same block with
probability about J^K (J their Jaccard similarity), and collide only at random otherwise.

**What is stored, and counted.** Per value that has a signature: its key (4 B: a 31-bit hash of the
feature and the raw value; another value of the same key would read the signature, which at most
a few million signed values among 2**31 keys makes rare) and 4 b-bit min-hashes of 16 bits packed in one int64 (the authors' kernel keeps one
int64 of packed min-hash fragments per value). Block j combines the j-th K-subset of the 4
fragments. Only values seen at least ``min_count`` times in the sample get a signature, the most
frequent first, and signatures take at most ``signature_share`` of the budget; the rest (values seen
once, unseen values, ids new at serving time) read random blocks exactly as ``robe`` does, which
costs nothing to store. ``embedding_bytes`` counts array and signatures.

Why ``min_count`` 2 by default: a value seen once shares its one-row set with every other once-seen
value of that row, so LMA would give all of them the same vector from no evidence of similarity.

The signatures are a data step (:func:`write_signatures`, ``cafe-dist data signatures``): computed
once per dataset from a uniform sample of train rows (the authors use 125,000), stored as Parquet
beside the dataset, and read by every worker. A training run computes them on the driver first if
they are missing (:meth:`LMAEmbedding.prepare_data`).
"""

from __future__ import annotations

import io
import itertools
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import Field

from cafe_dist.data import storage
from cafe_dist.data.schema import SIGNATURES_DIR, DatasetMeta
from cafe_dist.embeddings.base import MethodOptions
from cafe_dist.embeddings.hashing import hash64, hash_mod
from cafe_dist.embeddings.robe import ROBEEmbedding, ROBEOptions
from cafe_dist.embeddings.routing import Values

log = logging.getLogger("cafe_dist.lma")

FRAGMENTS = 4  # b-bit min-hashes per value, packed in one int64
FRAGMENT_BITS = 16
SIGNATURE_BYTES = 8  # the packed fragments of one value
SIGNED_SEED = 1 << 20  # block seeds of signed values, apart from the random (robe) ones
KEY_SEED = (1 << 20) - 1  # the hash of (feature, raw value) that keys the signatures
KEY_SPACE = (1 << 31) - 1


class LMAOptions(ROBEOptions):
    k: int = Field(2, ge=1, le=FRAGMENTS)  # min-hashes combined per block location
    sample_rows: int = Field(125_000, gt=0)  # train rows the semantic sets are drawn from
    min_count: int = Field(2, ge=1)  # sampled rows a value needs for a signature
    seed: int = 0  # the row sample and the min-hash functions
    signature_share: float = Field(0.5, gt=0, lt=1)  # most of the budget signatures may take
    signatures: str | None = None  # the signature file; set on the driver by prepare_data if not given


def signature_keys(feature: torch.Tensor, raw: torch.Tensor, features: int) -> torch.Tensor:
    """The int32 key of each (feature index, raw value)."""
    return hash_mod(raw * features + feature, KEY_SPACE, seed=KEY_SEED).to(torch.int32)


def minhash_signatures(ids: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Signatures of every value in a sample: ``ids`` (R, F) raw values, one row per sampled row.
    Returns ``feature`` (column index), ``id``, ``count`` (rows it appears in) and ``signature``
    (``FRAGMENTS`` 16-bit min-hashes of its row set, packed), one entry per distinct (feature, id)."""
    r, nf = ids.shape
    key = (torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)) * nf + torch.arange(nf)).reshape(-1)
    uniq, inv, counts = torch.unique(key, return_inverse=True, return_counts=True)
    row = torch.arange(r, dtype=torch.int64).repeat_interleave(nf)  # row of each entry (row-major)
    sig = torch.zeros(uniq.numel(), dtype=torch.int64)
    for i in range(FRAGMENTS):  # min over a value's rows of an independent hash of the row number
        h = hash64(row, seed=seed * FRAGMENTS + i)
        m = torch.empty_like(sig).scatter_reduce_(0, inv, h, "amin", include_self=False)
        sig |= (m & ((1 << FRAGMENT_BITS) - 1)) << (FRAGMENT_BITS * i)
    return {"feature": (uniq % nf).numpy().astype(np.int16), "id": (uniq // nf).numpy(),
            "count": counts.numpy().astype(np.int32), "signature": sig.numpy()}


def signature_path(data_dir: str, sample_rows: int, seed: int, min_count: int) -> str:
    # "raw": of raw values (files of datasets converted with a vocabulary hold contiguous ids)
    return storage.join(data_dir, SIGNATURES_DIR, f"signatures_raw_r{sample_rows}_s{seed}_c{min_count}.parquet")


def write_signatures(data_dir: str, meta: DatasetMeta, sample_rows: int = 125_000, seed: int = 0,
                     min_count: int = 2, progress: bool = True, address: str | None = None) -> str:
    """Sample train rows (``address``: as a Ray Data job on that cluster), compute every value's
    signature, keep those seen ``min_count`` times or more, and write them beside the dataset
    (atomically). Returns the file's location."""
    from cafe_dist.data.sample import sample_train_ids

    t0 = time.perf_counter()
    ids = sample_train_ids(data_dir, meta, sample_rows, seed, progress=progress, address=address)
    table = signature_table(minhash_signatures(ids, seed), meta.sparse_features, min_count)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path = signature_path(data_dir, sample_rows, seed, min_count)
    storage.write_bytes(path, buf.getvalue())
    log.info("LMA signatures: %s values seen >= %d times in %s sampled rows, %.1f s -> %s",
             f"{table.num_rows:,}", min_count, f"{len(ids):,}", time.perf_counter() - t0, path)
    return path


def signature_table(sig: dict[str, np.ndarray], features: list[str], min_count: int = 1) -> pa.Table:
    """The signature file's contents: :func:`minhash_signatures` of values seen ``min_count`` times
    or more, with feature names (``features``: the sample's columns)."""
    keep = sig["count"] >= min_count
    names = np.asarray(features)
    return pa.table({"feature": pa.array(names[sig["feature"][keep]]).dictionary_encode(),
                     "id": sig["id"][keep], "count": sig["count"][keep], "signature": sig["signature"][keep]})


class LMAEmbedding(ROBEEmbedding):
    options = LMAOptions
    array_name = "lma"
    n_signed = 0  # values with a signature (set with the tables)
    key_bytes = 4

    def __init__(self, *args, z: int = 4, k: int = 2, sample_rows: int = 125_000, min_count: int = 2,
                 seed: int = 0, signature_share: float = 0.5, signatures: str | None = None, **kwargs) -> None:
        self.k, self.min_count, self.signature_share = k, min_count, signature_share
        self.signatures = signatures
        super().__init__(*args, z=z, **kwargs)

    @classmethod
    def prepare_data(cls, data_dir: str, meta: DatasetMeta, options: MethodOptions | None) -> MethodOptions | None:
        opts = options if isinstance(options, LMAOptions) else LMAOptions()
        if opts.signatures is not None:
            return opts
        path = signature_path(data_dir, opts.sample_rows, opts.seed, opts.min_count)
        if not storage.is_file(path):
            log.info("LMA: no signatures for this dataset yet; computing them from %s sampled train rows",
                     f"{opts.sample_rows:,}")
            write_signatures(data_dir, meta, opts.sample_rows, opts.seed, opts.min_count)
        return opts.model_copy(update={"signatures": path})

    @classmethod
    def portable_options(cls, options: MethodOptions | None, move) -> MethodOptions | None:
        if isinstance(options, LMAOptions) and options.signatures is not None:
            return options.model_copy(update={"signatures": move(options.signatures)})
        return options

    @classmethod
    def planning_options(cls, options: MethodOptions | None) -> MethodOptions | None:
        if isinstance(options, LMAOptions):  # the array's size does not need the signatures themselves
            return options.model_copy(update={"signatures": None})
        return options

    # ---- tables --------------------------------------------------------------------------
    def array_bytes(self) -> float:
        """The budget less the signatures, which are loaded here because their number sets it."""
        cap = int(self.signature_share * self.budget.compressed_bytes // (self.key_bytes + SIGNATURE_BYTES))
        keys, sigs = self._load(cap)
        self.n_signed = int(keys.numel())
        self.register_buffer("sig_keys", keys, persistent=False)
        self.register_buffer("sig_vals", sigs, persistent=False)
        combos = list(itertools.combinations(range(FRAGMENTS), self.k))
        self.block_fragments = [combos[j % len(combos)] for j in range(self.dim // self.z)]
        return self.budget.compressed_bytes - self.aux_bytes()

    def _load(self, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (sorted) and signatures of the values that get one: compressed features, seen
        ``min_count`` times or more, the ``cap`` most frequent."""
        empty = torch.zeros(0, dtype=torch.int64)
        if self.signatures is None:
            return empty.to(torch.int32), empty
        t = pq.read_table(io.BytesIO(storage.read_bytes(self.signatures)))
        compressed = {f.name for f in self.compressed}
        index = {f.name: i for i, f in enumerate(self.features) if f.name in compressed}
        col = t.column("feature").combine_chunks()
        if not pa.types.is_dictionary(col.type):
            col = col.dictionary_encode()
        feature = np.array([index.get(n, -1) for n in col.dictionary.to_pylist()] + [-1],
                           dtype=np.int64)[col.indices.fill_null(-1).to_numpy()]
        ids, count = t.column("id").to_numpy(), t.column("count").to_numpy()
        ok = (feature >= 0) & (count >= self.min_count)
        sel = np.flatnonzero(ok)
        sel = sel[np.argsort(-count[sel], kind="stable")[:cap]]
        keys = signature_keys(torch.from_numpy(feature[sel]), torch.from_numpy(ids[sel]), len(self.features))
        order = torch.argsort(keys)
        return keys[order], torch.from_numpy(t.column("signature").to_numpy()[sel])[order]

    def aux_bytes(self) -> int:
        return self.n_signed * (self.key_bytes + SIGNATURE_BYTES)

    # ---- lookups -------------------------------------------------------------------------
    def block_rows(self, v: Values) -> list[torch.Tensor]:
        """Signed values: row of block j = a hash of that block's K min-hash fragments and j (so
        values with the same fragments share the block, whatever their feature); others as robe."""
        rows = super().block_rows(v)
        n = self.n_signed
        if n == 0:
            return rows
        key = signature_keys(v.feature, v.ids, len(self.features))
        pos = torch.searchsorted(self.sig_keys, key).clamp_(max=n - 1)
        found = self.sig_keys.index_select(0, pos) == key
        sig = self.sig_vals.index_select(0, pos)
        mask = (1 << FRAGMENT_BITS) - 1
        for j, frags in enumerate(self.block_fragments):
            combined = torch.zeros_like(sig)
            for i, a in enumerate(frags):
                combined |= ((sig >> (FRAGMENT_BITS * a)) & mask) << (FRAGMENT_BITS * i)
            rows[j] = torch.where(found, hash_mod(combined, self.array_rows, seed=SIGNED_SEED + j), rows[j])
        return rows

    def sync_summary(self, train_time_s: float) -> dict[str, float]:
        return {"lma_signed": float(self.n_signed), "lma_signature_bytes": float(self.aux_bytes()),
                "lma_array_rows": float(self.array_rows)}
