"""Kept so that CAFE checkpoints written before the hot map moved into the CAFE package
(:mod:`cafe_dist.embeddings.cafe.hotmap`) still unpickle: their coordinator state names this module."""

from cafe_dist.embeddings.cafe.hotmap import HotMap, HotMapUpdate  # noqa: F401
