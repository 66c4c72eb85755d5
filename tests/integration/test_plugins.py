"""A method is one file plus one registry line: here a toy method, defined and registered in this
file only, gets its own config section and trains through the normal path (Ray Train, DMP)."""

import pytest
import torch
from pydantic import Field

from cafe_dist.config import ConfigError, load_config
from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.embeddings.registry import REGISTRY, register
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.tables import table


class ToyOptions(MethodOptions):
    share: float = Field(1.0, gt=0, le=1)  # of the budget, the rest left unused


class ToyEmbedding(CompressedEmbedding):
    """Every compressed feature's ids modulo its table's rows (no hashing)."""

    options = ToyOptions
    level_stats = {"toy_tables": "toy_tables"}

    def __init__(self, *args, share: float = 1.0, **kwargs) -> None:
        self.share = share
        super().__init__(*args, **kwargs)

    def method_tables(self):
        self.toy_rows = self.allocate_rows(self.share)
        return [table(f"toy_{n}", r, self.dim, [n]) for n, r in self.toy_rows.items()]

    def routes(self, v: Values) -> list[Route]:
        rows = self.per_value([self.toy_rows.get(f.name, f.cardinality) for f in self.features], v)
        return [Route("", torch.ones_like(self.is_full), torch.where(self.is_full[v.feature], v.ids, v.ids % rows))]

    def after_step(self, rows=None) -> dict[str, float]:
        return {"toy_tables": float(len(self.toy_rows))}  # a level: the run reports the latest value


@pytest.fixture
def toy():
    register("toy", ToyEmbedding)
    try:
        yield
    finally:
        REGISTRY.pop("toy")


def test_the_toy_method_has_its_own_checked_config_section(toy, tmp_path):
    job = load_config(None, ["data.path=x", "embedding.method=toy", "toy.share=0.5"])
    assert job.toy.share == 0.5 and job.method_options() == ToyOptions(share=0.5)
    assert load_config(None, ["data.path=x"]).toy.share == 1.0  # every method's section has its defaults
    with pytest.raises(ConfigError, match=r"toy\.share"):
        load_config(None, ["data.path=x", "embedding.method=toy", "toy.share=2"])
    with pytest.raises(ConfigError, match=r"toy\.sahre.*did you mean 'toy\.share'"):
        load_config(None, ["data.path=x", "toy.sahre=0.5"])


def test_the_toy_method_trains_through_the_normal_path(toy, ray_cluster, tiny_synth, tmp_path):
    from cafe_dist.train.launcher import run_training

    job = load_config(None, [f"data.path={tiny_synth}", "embedding.method=toy", "embedding.compression_ratio=20",
                             "toy.share=0.5", "train.batch_size=256", "train.max_steps=30", "mlflow.enabled=false",
                             f"ray.storage_path={tmp_path / 'runs'}"])
    out = run_training(job)
    assert out.method == "toy" and out.steps == 30 and 0.5 < out.auc < 1, out
    assert out.stats["toy_tables"] > 0  # the method's own statistic, named as it declared
    assert out.compression_ratio > 20 * 1.5  # half the budget left unused: well past 20x
