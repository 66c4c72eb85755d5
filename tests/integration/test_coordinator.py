"""The hot-set coordinator: deterministic merge, stable slots, budget, and a real async Ray actor."""

import time

import numpy as np
import pytest
import torch

from cafe_dist.embeddings.cafe.coordinator import ActorSync, HotSetMerger, MergeConfig, start_coordinator
from cafe_dist.embeddings.cafe.hotmap import HotMap
from cafe_dist.embeddings.cafe.sketch import HotSketch


def _summary(d):
    keys = np.array(sorted(d), np.int64)
    return keys, np.array([d[k] for k in keys], np.float32)


def test_merge_sums_ranks_keeps_slots_stable_and_respects_the_budget():
    m = HotSetMerger(MergeConfig(num_slots=3, threshold=10.0, world_size=2))
    m.submit(0, 0, *_summary({1: 6.0, 2: 20.0, 3: 4.0}))
    assert m.update(0) is None  # waits for every rank
    m.submit(0, 1, *_summary({1: 6.0, 4: 9.0, 5: 30.0}))
    u1 = m.update(0)
    assert u1.version == 1 and sorted(u1.promoted_keys.tolist()) == [1, 2, 5]  # 12, 20, 30 ≥ 10; 4 has 9
    slot_of = dict(zip(u1.promoted_keys.tolist(), u1.promoted_slots.tolist()))
    # round 1: key 1 drops below, 6 and 7 qualify, only one slot frees up → the stronger (7) wins
    m.submit(1, 0, *_summary({2: 15.0, 5: 10.0, 6: 11.0}))
    m.submit(1, 1, *_summary({1: 3.0, 7: 40.0}))
    u2 = m.update(1)
    assert u2.demoted_keys.tolist() == [1] and u2.demoted_slots.tolist() == [slot_of[1]]
    assert u2.promoted_keys.tolist() == [7] and u2.promoted_slots.tolist() == [slot_of[1]]  # freed slot reused
    hot = HotMap()
    hot.apply(u1)
    hot.apply(u2)
    assert hot.lookup(torch.tensor([2, 5, 7, 1, 6])).tolist() == [slot_of[2], slot_of[5], slot_of[1], -1, -1]
    # since when each id is hot (what `cafe-dist hot` shows): the version that promoted it, kept by a reload
    assert dict(zip(m.hot_keys.tolist(), m.hot_since.tolist())) == {2: 1, 5: 1, 7: 2}
    again = HotSetMerger(m.config)
    again.load_state_dict(m.state_dict())
    assert again.hot_since.tolist() == m.hot_since.tolist()


def test_medium_set_for_cafe_ml():
    m = HotSetMerger(MergeConfig(num_slots=1, threshold=10.0, world_size=1, ml_threshold=3.0, max_medium=2))
    m.submit(0, 0, *_summary({1: 50.0, 2: 8.0, 3: 4.0, 4: 5.0, 5: 1.0}))
    u = m.update(0)
    assert u.promoted_keys.tolist() == [1] and u.medium_keys.tolist() == [2, 4]  # strongest two in [3, 10)


def test_merged_worker_sketches_find_the_same_heavy_hitters_as_one_sketch():
    """Two workers' local sketches, merged, against one sketch of the whole stream."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(200_000)
    stream = perm[(rng.zipf(1.1, size=1_000_000) - 1) % 200_000]
    values, counts = np.unique(stream, return_counts=True)
    truth = values[np.argsort(-counts, kind="stable")[:500]]
    cfg = dict(num_buckets=1_000)

    def hot_set(parts):
        merger = HotSetMerger(MergeConfig(num_slots=500, threshold=100.0, world_size=len(parts)))
        for rank, part in enumerate(parts):
            s = HotSketch(**cfg)
            for i in range(0, len(part), 4096):
                s.insert(torch.from_numpy(part[i:i + 4096]))
            merger.submit(0, rank, *s.candidates(100.0 / (2 * len(parts))))
        return set(merger.update(0).promoted_keys.tolist())

    one, two = hot_set([stream]), hot_set([stream[0::2], stream[1::2]])
    hit_one, hit_two = one & set(truth.tolist()), two & set(truth.tolist())
    assert len(hit_one) >= 0.95 * 500 and len(hit_two) >= 0.95 * 500
    assert len(hit_one & hit_two) >= 0.95 * len(hit_one | hit_two)


def test_merger_state_round_trip():
    m = HotSetMerger(MergeConfig(num_slots=4, threshold=1.0, world_size=1))
    m.submit(0, 0, *_summary({7: 5.0, 8: 2.0}))
    m2 = HotSetMerger(MergeConfig(num_slots=1, threshold=99.0, world_size=3))
    m2.load_state_dict(m.state_dict())
    m.submit(1, 0, *_summary({7: 5.0, 9: 3.0}))
    m2.submit(1, 0, *_summary({7: 5.0, 9: 3.0}))
    a, b = m.update(1), m2.update(1)
    assert a.version == b.version == 2 and torch.equal(a.promoted_slots, b.promoted_slots)


def test_actor_exchange_is_asynchronous(ray_cluster):
    """send() returns at once; the worker keeps stepping while the (slowed) merge is in flight."""
    actor = start_coordinator("async-test", merge_delay_s=1.0)  # noqa: F841 (keeps it alive)
    syncs = [ActorSync("async-test", MergeConfig(num_slots=8, threshold=1.0, world_size=2)) for _ in range(2)]
    t0 = time.time()
    for rank, sync in enumerate(syncs):
        sync.send(0, rank, *_summary({rank + 1: 5.0, 9: 1.0}))
    sent = time.time() - t0
    steps = 0
    while time.time() - t0 < 0.5:  # "training" while the merge is in flight
        torch.randn(256, 256) @ torch.randn(256, 256)
        steps += 1
    update = syncs[0].receive(0)
    assert sent < 0.5 and steps > 0
    assert update.stats["ready_at"] >= t0 + 1.0  # the merge really was still in flight
    assert sorted(update.promoted_keys.tolist()) == [1, 2, 9]
    assert torch.equal(syncs[1].receive(0).promoted_slots, update.promoted_slots)  # same version for all


def test_actor_rejects_a_conflicting_configuration(ray_cluster):
    import ray

    actor = start_coordinator("conf-test")  # noqa: F841 (keeps it alive)
    ActorSync("conf-test", MergeConfig(num_slots=8, threshold=1.0, world_size=1))
    with pytest.raises(ray.exceptions.RayTaskError, match="already configured"):
        ActorSync("conf-test", MergeConfig(num_slots=9, threshold=1.0, world_size=1))


def test_a_restarted_actor_gets_the_summaries_it_had_not_merged_again(ray_cluster, tmp_path):
    """The actor saves one state per merged round; a summary of a round not yet merged is still an
    open call when the actor dies, so Ray delivers it again to the restarted actor."""
    import ray

    config = MergeConfig(num_slots=4, threshold=1.0, world_size=2, admission="capacity", hysteresis=1.5)
    rounds = [[{1: 5.0, 2: 3.0}, {1: 4.0, 3: 2.0}], [{4: 9.0, 2: 1.0}, {4: 8.0, 5: 7.0}]]
    expected = HotSetMerger(config)
    for r, parts in enumerate(rounds):
        for rank, part in enumerate(parts):
            expected.submit(r, rank, *_summary(part))
    actor = start_coordinator("restart-test", state_dir=str(tmp_path / "coordinator"))
    ray.get(actor.configure.remote(config))
    ray.get([actor.submit.remote(0, k, *_summary(p)) for k, p in enumerate(rounds[0])])  # merged and saved
    pending = actor.submit.remote(1, 0, *_summary(rounds[1][0]))  # open until rank 1's summary arrives
    assert not ray.wait([pending], timeout=0.5)[0]
    ray.kill(actor, no_restart=False)
    late = actor.submit.remote(1, 1, *_summary(rounds[1][1]))
    ray.get([pending, late], timeout=60)
    assert ray.get(actor.was_restarted.remote())
    got = ray.get(actor.wait.remote(1))
    assert got.version == 2 and torch.equal(got.promoted_keys, expected.update(1).promoted_keys)
    assert torch.equal(got.promoted_slots, expected.update(1).promoted_slots)
    assert [p.name for p in (tmp_path / "coordinator").iterdir()] == ["merged-v00000002.pt"]
