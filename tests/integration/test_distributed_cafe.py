"""Distributed CAFE on a real local Ray cluster: 2 workers against 1 on the same data and global
batch. Per-worker sketches, the coordinator actor, one hot map, identical on every rank at every step."""

import pytest

from cafe_dist.config import load_config
from cafe_dist.train.launcher import run_training

# three 2-worker runs on 400k rows (~4 min): the default run checks rank agreement in
# test_methods_ray[cafe] and test_fault_tolerance
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth_400k(tmp_path_factory):
    from cafe_dist.data.synth import SynthSpec, generate_synthetic

    out = tmp_path_factory.mktemp("synth400k") / "data"
    # no drift (one period longer than the data): ranks read different parts of the stream, so with
    # drift the two runs would score different id populations at the same step
    generate_synthetic(out, SynthSpec(rows=400_000, seed=5, cardinality_scale=0.005, drift_period=10**9),
                       progress=False)
    return out


def _run(tmp_path, data, workers, method="cafe", extra=()):
    cfg = tmp_path / f"job{workers}.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    job = load_config(cfg, [f"ray.num_workers={workers}", f"train.batch_size={1024 // workers}",
                            f"embedding.method={method}", "embedding.compression_ratio=100",
                            "train.log_every=40", f"ray.storage_path={tmp_path / 'runs'}", *extra])
    return run_training(job)


@pytest.fixture(scope="module")
def runs(ray_cluster, synth_400k, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return {w: _run(tmp, synth_400k, w) for w in (1, 2)}


def test_every_rank_holds_the_same_hot_map_at_every_step(runs):
    two = runs[2]
    assert two.world_size == 2 and two.stats["state_consistent_across_ranks"] is True
    assert two.stats["hot_syncs"] > 5 and two.stats["hot_map_version"] == two.stats["hot_syncs"]


def test_two_workers_find_the_same_heavy_hitters_as_one(runs):
    """Heavy hitters: the true 10 most popular ids of every compressed feature."""
    one, two = ({key for key, rank in runs[w].stats["true_top_ids_hot"] if rank < 10} for w in (1, 2))
    assert len(one) > 50
    assert len(one & two) >= 0.95 * len(one | two), (len(one), len(two), len(one & two))


@pytest.mark.slow
def test_two_worker_auc_matches_one_worker(runs, synth_400k, tmp_path_factory):
    """Distributing CAFE's hot set costs no accuracy: over 8 seeds, the mean test-AUC gap between 2
    workers and 1 (same data, budget, global batch) is within 0.003 of plain hashing's gap, measured
    the same way. Hashing has no hot set, so its gap is what data parallelism alone does to this
    model (measured: -0.0025 over 8 seeds; CAFE -0.0023 and -0.0035 in two 8-seed draws, BENCHMARKS.md).
    One pair is not enough: this model's AUC moves by ~0.005 from the seed alone, and even on
    identical global batches float rounding alone moves plain hashing by 0.002."""
    tmp = tmp_path_factory.mktemp("dist_seeds")
    auc = {("cafe", w, 0): runs[w].auc for w in (1, 2)}
    for method in ("cafe", "hash"):
        for seed in range(8):
            for w in (1, 2):
                if (method, w, seed) not in auc:
                    auc[method, w, seed] = _run(tmp, synth_400k, w, method, extra=[f"train.seed={seed}"]).auc
    gap = {m: [auc[m, 2, s] - auc[m, 1, s] for s in range(8)] for m in ("cafe", "hash")}
    mean = {m: sum(g) / len(g) for m, g in gap.items()}
    print("\n" + "\n".join(f"{m} seed {s}: 1w {auc[m, 1, s]:.4f} 2w {auc[m, 2, s]:.4f} gap {g:+.4f}"
                            for m in gap for s, g in enumerate(gap[m]))
          + f"\nmean gap: cafe {mean['cafe']:+.4f}, hash {mean['hash']:+.4f}")
    assert abs(mean["cafe"] - mean["hash"]) <= 0.003
    assert abs(mean["cafe"]) <= 0.006  # and data parallelism itself stays a small cost


def test_sync_is_cheap_and_observable(runs):
    two = runs[2]
    for key in ("hot_syncs", "sync_overhead_fraction", "hot_map_version", "sync_wait_s", "sync_bytes_sent"):
        assert key in two.stats
    assert two.stats["sync_bytes_sent"] > 0 and 0 < two.stats["sync_overhead_fraction"] < 0.2


def test_cafe_with_data_parallel_tables(ray_cluster, synth_400k, tmp_path):
    """Row migration when every table is replicated (trained by the dense optimizer)."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {synth_400k}}}\n")
    job = load_config(cfg, ["ray.num_workers=2", "train.batch_size=512", "train.max_steps=80",
                            "embedding.method=cafe", "embedding.compression_ratio=100",
                            "ray.sharding_types=[data_parallel]", f"ray.storage_path={tmp_path / 'runs'}"])
    out = run_training(job)
    assert out.stats["state_consistent_across_ranks"] is True and out.stats["promoted_total"] > 0
    assert out.auc > 0.6
