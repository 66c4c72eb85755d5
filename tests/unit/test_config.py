import pytest

from cafe_dist.config import ConfigError, load_config


def _write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides(tmp_path):
    p = _write(tmp_path, "data: {path: d}\ntrain: {batch_size: 64}\n")
    job = load_config(p, ["train.lr=0.1", "embedding.dim=8", "train.max_steps=10", "ray.num_workers=2"])
    assert job.train.batch_size == 64 and job.train.lr == 0.1 and job.train.max_steps == 10
    assert job.embedding.dim == 8 and job.ray.num_workers == 2
    assert job.flat()["data.path"] == "d"
    # the keys tools outside the package rely on
    for key in ("data.path", "embedding.method", "embedding.dim", "embedding.compression_ratio",
                "train.batch_size", "train.epochs", "train.max_steps", "train.lr"):
        assert key in job.flat()


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = _write(tmp_path, "data: {path: d}\ntrain: {bach_size: 64}\n")
    with pytest.raises(ConfigError, match=r"'train.bach_size' is not a known key \(did you mean 'train.batch_size'"):
        load_config(p)


def test_unknown_override_key(tmp_path):
    p = _write(tmp_path, "data: {path: d}\n")
    with pytest.raises(ConfigError, match=r"'embedding.dimension' is not a known key"):
        load_config(p, ["embedding.dimension=4"])


@pytest.mark.parametrize(
    "override, key",
    [("train.batch_size=0", "train.batch_size"), ("train.lr=-1", "train.lr"),
     ("embedding.compression_ratio=0.5", "embedding.compression_ratio"),
     ("train.epochs=abc", "train.epochs"), ("embedding.method=nope", "embedding")],
)
def test_bad_values_name_the_key(tmp_path, override, key):
    p = _write(tmp_path, "data: {path: d}\n")
    with pytest.raises(ConfigError, match=f"config key '{key}"):
        load_config(p, [override])


def test_missing_required_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="'data' is required"):
        load_config(_write(tmp_path, "train: {lr: 0.1}\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(_write(tmp_path, "data: {path: d}\n"), ["train.lr"])
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path, "- a\n- b\n"))


def test_a_target_auc_needs_periodic_evaluation(tmp_path):
    p = _write(tmp_path, "data: {path: d}\n")
    with pytest.raises(ConfigError, match="train.target_auc is checked at evaluations: set train.eval_every"):
        load_config(p, ["train.target_auc=0.8"])
    assert load_config(p, ["train.target_auc=0.8", "train.eval_every=100"]).train.target_auc == 0.8


def test_auc_plot_ticks_sit_at_the_requested_ratios_also_for_one(tmp_path):
    from cafe_dist.compare import RunRow, plot_auc_vs_ratio, ratio_ticks

    assert ratio_ticks({100.0}) == ([100.0], ["100x"], (50.0, 200.0))
    assert ratio_ticks({1.0, 10.0, 10000.0})[1] == ["1x", "10x", "10,000x"]
    rows = [RunRow("", f"r{s}", "cafe", 100.4 + s, 0.1, 0.75 + s / 100, 0.5, 1.0, 1, "FINISHED", requested_ratio=100.0)
            for s in range(3)]  # achieved ratios differ by seed; all three are one point at 100x
    assert plot_auc_vs_ratio(rows, tmp_path / "one.png") == 1 and (tmp_path / "one.png").stat().st_size > 5_000
