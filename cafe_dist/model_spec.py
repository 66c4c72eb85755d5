"""One description of the model a run trains, exports and serves: the method, its ratio and
settings, the dims, the seed. The trainer, ``cafe-dist export``/serving, ``plan`` and the launcher's
preflight each build the model from a :class:`ModelSpec` (the features come from the dataset's
``meta.json``), so they cannot drift apart; a checkpoint's manifest and an export's ``model.json``
carry its JSON."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from cafe_dist.config import JobConfig
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.embeddings import CompressedEmbedding
    from cafe_dist.model import DLRM


@dataclass(frozen=True)
class ModelSpec:
    method: str
    compression_ratio: float
    dim: int
    dense_arch: tuple[int, ...]
    over_arch: tuple[int, ...]
    seed: int
    options: Any = None  # the method's settings (its options model), or None
    # the file listing the raw values that may own a row of an uncompressed table (the run's copy of
    # the dataset's, full's vocabulary, an export's values.parquet); None: sizes only (plan)
    values: str | None = None
    # the method's class as the driver resolved it (a method registered at run time reaches Ray
    # workers this way); None: looked up by name in the registry
    klass: type | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_job(cls, job: JobConfig, options: Any = None, *, method: str | None = None,
                 ratio: float | None = None, klass: type | None = None, values: str | None = None) -> ModelSpec:
        """The job's model; ``options``: the method's settings as the workers get them (default: the
        job's section); ``method``/``ratio`` for another cell of the same job (``plan``)."""
        from cafe_dist.embeddings.registry import section_of

        method = method or job.embedding.method
        if options is None and (section := section_of(method)) is not None:
            options = getattr(job, section)
        return cls(method, job.embedding.compression_ratio if ratio is None else ratio, job.embedding.dim,
                   tuple(job.model.dense_arch), tuple(job.model.over_arch), job.train.seed, options, values,
                   klass)

    def with_options(self, options: Any) -> ModelSpec:
        return replace(self, options=options)

    def with_values(self, values: str | None) -> ModelSpec:
        return replace(self, values=values)

    def to_json(self) -> dict[str, Any]:
        opts = self.options
        return {"method": self.method, "compression_ratio": self.compression_ratio, "dim": self.dim,
                "dense_arch": list(self.dense_arch), "over_arch": list(self.over_arch), "seed": self.seed,
                "options": opts.model_dump(mode="json") if opts is not None else None,
                # which settings the job gave (a method may derive the others from them, as cafe's paper preset does)
                "options_set": sorted(opts.model_fields_set) if opts is not None else None,
                "values": self.values}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ModelSpec:
        """From :meth:`to_json`'s dict (a manifest's ``model`` entry, an export's ``model.json``)."""
        from cafe_dist.embeddings.registry import method_class

        options = None
        klass = method_class(doc["method"])
        if klass.options and doc.get("options"):
            options = klass.options.from_saved(doc["options"])
            if doc.get("options_set") is not None:  # the same values, and which of them the job set
                options = klass.options.model_construct(_fields_set=set(doc["options_set"]), **dict(options))
        return cls(doc["method"], doc["compression_ratio"], doc["dim"], tuple(doc["dense_arch"]),
                   tuple(doc["over_arch"]), doc.get("seed", 0), options, doc.get("values"))

    def embedding(self, meta: DatasetMeta, device: torch.device | None = None) -> CompressedEmbedding:
        """The method's module for ``meta``'s features (``device`` "meta": sizes only, nothing allocated).
        A feature listed in :attr:`values` has a row per listed value (+ row 0); without the file
        (sizes only), the features meta.json counted exactly are the listed ones."""
        from cafe_dist.data.vocabulary import read_values
        from cafe_dist.embeddings import FeatureSpec, build_embedding

        known = read_values(self.values, meta.sparse_features) if self.values is not None else None
        features = [FeatureSpec(f, len(known[f]) + 1, listed=True) if known is not None and f in known else
                    FeatureSpec(f, meta.cardinality[f], listed=known is None and meta.counted_exactly(f))
                    for f in meta.sparse_features]
        emb = build_embedding(self.klass or self.method, features, self.dim, self.compression_ratio, device=device,
                              options=self.options)
        if known is not None:
            emb.set_known_values(known)
        emb.bind_data(meta.rows["train"])
        return emb

    def build(self, meta: DatasetMeta, device: torch.device, tables_on_host: bool = False) -> DLRM:
        """The whole DLRM on ``device``, seeded as training seeds it; ``tables_on_host``: the tables
        stay on the host for DMP to shard and place (training), else they are plain tables on
        ``device`` (serving, export, ``plan`` on the meta device)."""
        from cafe_dist.model import DLRM

        torch.manual_seed(self.seed)
        emb = self.embedding(meta, None if tables_on_host else device)
        return DLRM(emb, len(meta.dense_features), list(self.dense_arch), list(self.over_arch), device=device)
