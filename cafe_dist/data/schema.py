"""The on-disk Parquet layout every converter writes and the trainer reads.

One directory per dataset::

    DIR/meta.json            schema, distinct counts (and how each was counted), row counts, bad_rows
    DIR/values.parquet       (feature, value): the exact train values of the features with at most
                             cafe_dist.data.distinct.EXACT_LIMIT of them (the small ones); no others
    DIR/bad_rows.tsv         source, line number, reason and the raw line of every rejected line
    DIR/train/part-*.parquet
    DIR/test/part-*.parquet
    DIR/vocabulary/          vocabularies ``full`` built for its runs (only when a run needed one)

Columns: ``label`` (int8; -1 when the source is unlabeled), dense features (float32, already
log(1+x) transformed), and each categorical feature's raw 32-bit value (a missing value is
``MISSING_ID``). Every method reads the raw values: compressed ones hash them (a feature the budget
keeps uncompressed, which only a listed feature can be, maps its listed values to rows), ``full``
maps them through a vocabulary (:mod:`cafe_dist.data.vocabulary`). There is no global id
assignment, so conversion is one map-only pass.

Datasets converted before this layout (``vocab.parquet`` and ``<name>_idx`` columns) still load:
their ``vocab.parquet`` lists every feature's train values exactly, so it serves as the values
file, and the ``_idx`` columns are not read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MISSING_ID = 1 << 32  # outside the 32-bit raw value range, so it never collides with a real value
META_FILE = "meta.json"
VALUES_FILE = "values.parquet"
VOCAB_FILE = "vocab.parquet"  # the vocabulary of datasets converted before raw ids (a values file)
VOCABULARY_DIR = "vocabulary"  # full's vocabularies, built for runs that needed them
BAD_ROWS_FILE = "bad_rows.tsv"
SPLITS = ("train", "test")
SIGNATURES_DIR = "lma"  # LMA's signatures of the dataset's values (cafe-dist data signatures), kept inside it

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
# Criteo Kaggle per-feature cardinalities as counted by the DLRM/TorchRec preprocessing.
CRITEO_KAGGLE_CARDINALITIES = [
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
]  # fmt: skip


def values_file(data_dir: str | Path) -> str | None:
    """The dataset's list of exact values (``values.parquet``; a dataset of the old layout: its
    ``vocab.parquet``, which lists them all), or None when it has neither."""
    from cafe_dist.data import storage

    for name in (VALUES_FILE, VOCAB_FILE):
        path = storage.join(data_dir, name)
        if storage.is_file(path):
            return path
    return None


@dataclass
class DatasetMeta:
    """Contents of ``meta.json``; tools outside the package read these keys."""

    format: str
    dense_features: list[str]
    sparse_features: list[str]
    cardinality: dict[str, int]  # rows a full table needs per feature (distinct train values + 1 for row 0)
    raw_distinct: dict[str, int]  # distinct raw values seen in the train split
    rows: dict[str, int]  # per split
    bad_rows: int
    labeled: bool = True
    missing_id: int = MISSING_ID
    sources: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    # how each feature's distinct count was taken ("exact", or the sketch and its error); {}: a
    # dataset of the old layout, counted exactly through its vocabulary
    distinct_counted: dict[str, str] = field(default_factory=dict)

    def counted_exactly(self, feature: str) -> bool:
        """Whether conversion counted (and so listed) ``feature``'s values exactly; a dataset of
        the old layout did for every feature (its vocabulary lists them all)."""
        return self.distinct_counted.get(feature, "exact") == "exact"

    def save(self, out_dir: str | Path) -> None:
        path = Path(out_dir) / META_FILE
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, data_dir: str | Path) -> DatasetMeta:
        """``data_dir``: a local directory or a URI pyarrow reads (see cafe_dist.data.storage)."""
        from cafe_dist.data import storage

        path = storage.join(data_dir, META_FILE)
        if not storage.is_file(path):
            raise FileNotFoundError(
                f"{path} not found: {data_dir} is not a converted dataset. "
                "Create one with `cafe-dist data criteo|avazu|synth --out DIR`."
            )
        return cls(**json.loads(storage.read_text(path)))
