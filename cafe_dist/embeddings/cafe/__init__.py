"""CAFE (Zhang et al., SIGMOD 2024): hot ids get a unique row, the rest share a cold tier.

One method in parts, one job each: :mod:`.method` (settings, sizing, id remapping, the step's
wiring), :mod:`.layout`, :mod:`.scoring`, :mod:`.client`, :mod:`.migration`.
"""

from cafe_dist.embeddings.cafe.method import CafeEmbedding, CafeMLEmbedding, CafeOptions, hash_fraction_for

__all__ = ["CafeEmbedding", "CafeMLEmbedding", "CafeOptions", "hash_fraction_for"]
