"""Tests feed ids that are rows already (0 <= id < cardinality): these lists map each id k >= 1 of
an uncompressed feature to row k (and 0, an unlisted value, to row 0), as a dataset's list of
values would map its raw values."""

import numpy as np


def ids_as_values(emb):
    emb.set_known_values({f.name: np.arange(1, f.cardinality) for f in emb.features if f.name in emb.budget.full})
    return emb
