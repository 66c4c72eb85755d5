"""CAFE's rules (issue 17): the paper preset, the capacity-filling hot set with hysteresis, decay
by half-life, the ROBE cold tier and the metadata per hot row. Real TorchRec EBC on CPU; the merge
runs in-process (the coordinator actor runs the same HotSetMerger)."""

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from cafe_dist.embeddings import FeatureSpec, build_embedding
from cafe_dist.embeddings.cafe.coordinator import HotSetMerger, MergeConfig
from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate
from cafe_dist.embeddings.cafe.layout import ROBE_TABLE
from cafe_dist.embeddings.cafe.method import PAPER_RULES, hash_fraction_for
from cafe_dist.embeddings.cafe.scoring import ImportanceScorer, rank_report
from cafe_dist.embeddings.cafe.sketch import HotSketch
from cafe_dist.embeddings.table_rows import TableRows
from tests.values import ids_as_values

SMALL = [FeatureSpec("a", 4), FeatureSpec("b", 300), FeatureSpec("c", 20_000), FeatureSpec("d", 50_000)]
WIDE = [FeatureSpec(f"f{i}", c) for i, c in enumerate([5_000, 40_000, 200_000, 1_000_000, 3_000_000])]


def _emb(ratio=100, features=SMALL, **opts):
    torch.manual_seed(0)
    return ids_as_values(build_embedding("cafe", features, 16, ratio, device=torch.device("cpu"), options=opts))


def _kjt(cols: torch.Tensor, names) -> KeyedJaggedTensor:
    return KeyedJaggedTensor(keys=list(names), values=cols.reshape(-1),
                             lengths=torch.ones(cols.numel(), dtype=torch.int32), stride=cols.shape[1])


def _step(emb, rows, cols):
    emb(_kjt(cols, emb.names)).sum().backward()
    return emb.after_step(rows)


# ---- the paper preset -------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", sorted(PAPER_RULES))
def test_paper_preset_takes_k_and_the_hash_share_from_the_ratio(ratio):
    emb = _emb(ratio, WIDE, preset="paper")
    k, share = PAPER_RULES[ratio]
    assert emb.threshold == k and emb.hf == share
    assert emb.params.admission == "threshold" and emb.params.cold == "hash"
    assert emb.coordinator_config(1).threshold == k
    # explicit settings beside the preset win
    assert _emb(ratio, WIDE, preset="paper", threshold=7.0, hash_fraction=0.4).threshold == 7.0


def test_paper_preset_sizes_hash_rows_in_proportion_to_cardinality():
    emb = _emb(100, WIDE, preset="paper")
    per_id = {f.name: emb.hash_rows[f.name] / f.cardinality for f in emb.compressed}
    assert len(per_id) >= 3 and max(per_id.values()) / min(per_id.values()) < 1.1
    fair = _emb(100, WIDE, cold="hash", admission="threshold")
    assert max(fair.hash_rows.values()) - min(fair.hash_rows.values()) <= 1  # the default: the same rows (± rounding)


def test_paper_preset_decays_by_099_once_the_inserted_mass_passes_10_x_slots_x_k():
    emb = _emb(100, SMALL, preset="paper", importance="freq", sync_interval=1000)
    bound = 10 * emb.hot_rows * emb.threshold
    assert emb.scorer.decay == ("mass", 0.99, bound)
    rows, n_comp = TableRows(emb), len(emb.compressed)
    batch = int(bound // n_comp // 3) + 1  # three batches pass the bound once
    cols = torch.stack([torch.zeros(batch, dtype=torch.int64)] * 4)  # id 0 of every feature
    key = emb.key_of("d", [0])
    for i in range(1, 4):
        _step(emb, rows, cols)
        expected = batch * i * (0.99 if i == 3 else 1.0)
        assert float(emb.sketch.scores(key)) == pytest.approx(expected, rel=1e-5)


# ---- the capacity-filling hot set -------------------------------------------------------------
def _merger(slots, h=1.5):
    return HotSetMerger(MergeConfig(num_slots=slots, threshold=1.0, world_size=1, admission="capacity",
                                    hysteresis=h))


def _round(m, round_, scores: dict[int, float]):
    m.submit(round_, 0, np.array(list(scores), np.int64), np.array(list(scores.values()), np.float32))
    return m.update(round_)


def test_capacity_fills_every_slot_with_the_strongest_ids():
    m = _merger(10)
    rng = np.random.default_rng(0)
    scores = dict(zip(range(100, 130), rng.uniform(0.1, 5, 30).tolist()))
    u = _round(m, 0, scores)
    assert sorted(u.promoted_keys.tolist()) == sorted(sorted(scores, key=scores.get)[-10:])
    assert sorted(u.promoted_slots.tolist()) == list(range(10))


@pytest.mark.parametrize("world", [3, 8])
def test_ranks_that_saw_the_same_ids_still_fill_every_slot_together(world):
    """Every rank sees every popular id, so each rank's overall top 2 x slots / W would be nearly the
    same list and W >= 3 ranks would name fewer ids than there are slots. Each rank reports its own
    part of the id space: the summaries are disjoint, fill every slot, and their scores (a rank's
    count times W) estimate the global counts."""
    slots = 60
    ids = torch.from_numpy(np.random.default_rng(0).zipf(1.2, 200_000) % 5_000)
    scorer = ImportanceScorer(2048, "frequency", "global", ("step", 1.0, 0.0))
    scorer.sketch.insert(ids)
    parts = [scorer.top(int(np.ceil(2 * slots / world)), r, world) for r in range(world)]
    keys = np.concatenate([k for k, _ in parts])
    assert len(np.unique(keys)) == len(keys)  # disjoint
    m = HotSetMerger(MergeConfig(num_slots=slots, threshold=1.0, world_size=world, admission="capacity",
                                 hysteresis=1.5))
    for r, (k, sc) in enumerate(parts):
        m.submit(0, r, k, sc)
    assert m.update(0).stats["hot"] == slots
    counts = np.bincount(ids.numpy(), minlength=5_000)
    best = np.argsort(-counts)[:slots]
    assert len(set(m.hot_keys.tolist()) & set(best.tolist())) >= 0.9 * slots  # the right ids
    k0, s0 = parts[0]
    np.testing.assert_allclose(s0, counts[k0] * world, rtol=0.05)  # the whole stream on one rank: x W
    overall = rank_report(*scorer.sketch.lower_bounds(), int(np.ceil(2 * slots / world)), 0, 1)[0]
    assert len(np.unique(np.tile(overall, world))) < slots  # what each rank's overall top list would name


def test_a_stronger_newcomer_displaces_the_weakest_incumbent_and_a_slightly_stronger_one_does_not():
    m = _merger(4, h=1.5)
    _round(m, 0, {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0})
    u = _round(m, 1, {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0, 5: 9.5})  # 9.5 < 1.5 x 7: no change
    assert u.promoted_keys.numel() == 0 and u.demoted_keys.numel() == 0
    u = _round(m, 2, {1: 10.0, 2: 9.0, 3: 8.0, 4: 7.0, 5: 11.0})  # 11 > 1.5 x 7: takes 4's slot
    assert u.promoted_keys.tolist() == [5] and u.demoted_keys.tolist() == [4]
    assert u.promoted_slots.tolist() == u.demoted_slots.tolist()


def test_capacity_does_not_churn_on_a_stationary_stream():
    """200 ids with Zipf rates, 20 slots, scores = decayed counts of Poisson draws per round (the
    ids near the cut have nearly equal rates). Bound: mean churn per version below 0.05 after the
    first 10 versions with hysteresis 1.5; without hysteresis it churns more."""
    rates = 50.0 / np.arange(1, 201) ** 1.0
    churn = {}
    for h in (1.0, 1.5):
        rng = np.random.default_rng(1)
        m, score, log = _merger(20, h), np.zeros(200), []
        for r in range(60):
            score = 0.9 * score + rng.poisson(rates)
            u = _round(m, r, {i: s for i, s in enumerate(score) if s > 0})
            if r >= 10:
                log.append(u.stats["churn"])
        churn[h] = float(np.mean(log))
    assert churn[1.5] < 0.05 and churn[1.5] < churn[1.0], churn


def test_the_default_cafe_fills_its_hot_table_on_a_short_stream():
    emb = _emb(100, SMALL, sync_interval=1, sync_lag=0)
    rows = TableRows(emb)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        cols = torch.stack([torch.randint(0, f.cardinality, (256,), generator=g) % 400 for f in SMALL])
        _step(emb, rows, cols)
    assert len(emb.hot_map) == emb.hot_rows > 10


# ---- decay by half-life -----------------------------------------------------------------------
def _feed(scorer: ImportanceScorer, ids: torch.Tensor) -> None:
    """One step of ``ids`` (one feature, one id per row) through the backward hook."""
    out = torch.zeros(ids.numel(), 1, 1, requires_grad=True)
    scorer.capture(out, ids, torch.zeros_like(ids), torch.arange(ids.numel()), ids.numel())
    out.sum().backward()
    scorer.flush(1)


def test_half_life_decay_gives_the_same_hot_set_at_batch_64_and_1024():
    """The same 32,768-row stream (popular ids change halfway), half-life 1/4 of it: the 20
    strongest ids agree, and so do their scores, whatever the batch size."""
    zipf = torch.distributions.Categorical(probs=1.0 / torch.arange(1, 2001, dtype=torch.float64))
    torch.manual_seed(0)
    stream = zipf.sample((32_768,))
    stream[16_384:] = (stream[16_384:] + 1000) % 20_000  # drift: other ids are popular now
    tops = []
    for batch in (64, 1024):
        scorer = ImportanceScorer(4096, "freq", "field", None)
        scorer.half_life_samples = 0.25 * stream.numel()
        for i in range(0, stream.numel(), batch):
            _feed(scorer, stream[i:i + batch])
        keys, scores = scorer.top(20)
        tops.append(dict(zip(keys.tolist(), scores.tolist())))
    a, b = tops
    assert len(set(a) & set(b)) >= 18
    assert all(abs(a[k] - b[k]) <= 0.02 * a[k] for k in set(a) & set(b)), (a, b)


# ---- the ROBE cold tier -----------------------------------------------------------------------
def test_robe_cold_tier_promoted_row_equals_the_blocks_the_id_was_reading():
    emb = _emb(100, SMALL, cold="robe", admission="threshold", threshold=5.0, importance="freq",
               sync_interval=1, sync_lag=0, half_life_epochs=None, decay=1.0)
    assert ROBE_TABLE in {t.name for t in emb.tables} and emb.layout.robe_rows > 0
    rows = TableRows(emb)
    cols = torch.stack([torch.arange(8) % f.cardinality for f in SMALL])
    cols[3] = 42  # id 42 of feature d, 8 times: hot after this step
    before = emb(_kjt(cols, emb.names)).detach()
    key = emb.key_of("d", [42])
    blocks = torch.cat(rows.read([(ROBE_TABLE, emb.layout.robe_row(key, j)) for j in range(4)]), dim=1)
    _step(emb, rows, cols)
    assert int(emb.hot_map.lookup(key)) < 0  # learned in this step's work: rows and map over the next
    emb.after_step(rows)
    slot = int(emb.hot_map.lookup(key))
    assert slot >= 0
    assert torch.equal(rows.read([("cafe", emb.hot_row([slot]))])[0], blocks)
    after = emb(_kjt(cols, emb.names)).detach()
    assert torch.allclose(after, before)  # promotion changes where d's vector lives, not the vector


def test_robe_cold_tier_reaches_10000x_where_hash_rows_cannot():
    feats = [FeatureSpec(f"f{i}", 4_000) for i in range(20)] + [FeatureSpec("big", 2_000_000)]
    emb = _emb(10_000, feats)
    got = emb.full_embedding_bytes() / emb.embedding_bytes()
    assert emb.params.cold == "robe" and got == pytest.approx(10_000, rel=0.05)


# ---- the spread: hot rows over row-wise shards ----------------------------------------------------
def _blocks(rows: torch.Tensor, table_rows: int, world: int) -> torch.Tensor:
    """Which of TorchRec's row-wise blocks (ceil(rows / world) rows each) holds each row."""
    return rows // -(-table_rows // world)


@pytest.mark.parametrize("cold", ["robe", "hash"])
def test_the_spread_is_a_bijection_whatever_the_table(cold):
    emb = _emb(100, WIDE, cold=cold)
    lay, n = emb.layout, emb.layout.table_rows
    assert lay.stride > 1 and n == sum(t.num_embeddings for t in emb.tables if t.name == "cafe")
    rows = lay.row(torch.arange(n))
    assert torch.equal(torch.sort(rows).values, torch.arange(n))  # every row once
    assert torch.equal(lay.logical(rows), torch.arange(n))


@pytest.mark.parametrize("cold", ["robe", "hash"])
@pytest.mark.parametrize("world", [2, 8, 64])
def test_the_merger_gives_every_row_wise_shard_its_share_of_hot_rows_and_their_traffic(cold, world):
    """A first version's ids, strongest first, with Zipf traffic: the merger deals them to the
    row-wise blocks so that the busiest block serves little more than the mean; handed out in slot
    order with hot rows first (as before), the first blocks served many times the mean."""
    emb = _emb(10, [FeatureSpec(f"f{i}", 1_000_000) for i in range(4)], cold=cold)
    lay = emb.layout
    traffic = 1.0 / (np.arange(1, min(lay.hot_rows, 100_000) + 1) + 50.0)  # the head flat enough to split
    table, rows = emb.hot_row_places(traffic, world)
    assert table == "cafe" and np.unique(rows).size == rows.size == traffic.size
    block_rows = -(-lay.table_rows // world)
    load = np.bincount(rows // block_rows, weights=traffic, minlength=world)
    assert load.max() / load.mean() <= 1.1, load.max() / load.mean()
    held = np.bincount(rows // block_rows, minlength=world)
    assert held.max() - held.min() <= max(0.02 * held.mean(), 20)  # and each its share of the hot rows
    before = np.bincount(np.arange(traffic.size) // block_rows, weights=traffic, minlength=world)
    assert before.max() / before.mean() > min(world / 2, 5)


def test_later_versions_send_newcomers_to_the_blocks_with_the_least_hot_score():
    from cafe_dist.embeddings.cafe.coordinator import spread_over_blocks

    blocks = np.repeat(np.arange(4), 5)  # 20 slots, 4 blocks of 5
    free = np.array([19, 18, 4, 3, 9, 14, 13], dtype=np.int64)  # stack: 13 on top
    slots, left = spread_over_blocks(free, blocks, np.array([9.0, 1.0, 5.0, 0.5]), np.array([3.0, 2.0, 1.0]))
    # the strongest to the least loaded block (3), the next to block 1, the third wants block 1 again
    # (the least loaded now) but its one free slot is taken: the top of the stack left (13, block 2)
    assert blocks[slots].tolist() == [3, 1, 2] and slots.tolist() == [18, 9, 13]  # each block's top of the stack
    assert left.tolist() == [19, 4, 3, 14]  # the rest keep their order in the stack


def test_records_from_before_the_spread_keep_their_hot_rows_first():
    from cafe_dist.embeddings.cafe.method import CafeOptions
    from cafe_dist.model_spec import ModelSpec

    doc = {"method": "cafe", "compression_ratio": 100.0, "dim": 16, "dense_arch": [], "over_arch": [],
           "options": CafeOptions().model_dump(mode="json")}
    assert ModelSpec.from_json(doc).options.spread is True
    del doc["options"]["spread"]  # a manifest written before the setting existed
    old = ModelSpec.from_json(doc).options
    assert old.spread is False
    assert build_embedding("cafe", WIDE, 16, 100, options=old).layout.stride == 1


# ---- metadata -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio", [10, 100, 1000])
def test_metadata_per_hot_slot_is_at_most_48_bytes(ratio):
    emb = _emb(ratio, WIDE)
    per_slot = (emb.sketch.memory_bytes() + emb.hot_map.memory_bytes(emb.hot_rows)) / emb.hot_rows
    assert per_slot <= 48.0, per_slot
    assert HotSketch(1000).memory_bytes() / 1000 / 4 <= 12.125  # 12 B a cell + its pin bit


def test_a_manifest_rebuilds_cafe_with_the_settings_the_job_gave():
    """The paper preset derives unset settings (its threshold k by ratio) from the ones given: the
    manifest records which were set, so export rebuilds what trained (recorded as all-set, the
    rebuild would take the default threshold instead)."""
    from cafe_dist.embeddings import FeatureSpec, build_embedding
    from cafe_dist.embeddings.cafe.method import CafeOptions, paper_rule
    from cafe_dist.model_spec import ModelSpec

    def method_options(info):
        return ModelSpec.from_json({"compression_ratio": 20.0, "dim": 16, "dense_arch": [], "over_arch": [],
                                    **info}).options

    given = CafeOptions.model_validate({"preset": "paper", "sync_interval": 5})
    feats = [FeatureSpec(f"C{i}", 3000) for i in range(3)]
    trained = build_embedding("cafe_ml", feats, 16, 20.0, options=given)
    info = {"method": "cafe_ml", "options": given.model_dump(mode="json"), "options_set": sorted(given.model_fields_set)}
    again = build_embedding("cafe_ml", feats, 16, 20.0, options=method_options(info))
    assert again.threshold == trained.threshold == paper_rule(20.0)[0]
    assert [t.num_embeddings for t in again.tables] == [t.num_embeddings for t in trained.tables]
    all_set = build_embedding("cafe_ml", feats, 16, 20.0, options=method_options({**info, "options_set": None}))
    assert all_set.threshold == CafeOptions().threshold != trained.threshold


def test_cafe_ml_has_cafes_cold_tier_and_medium_ids_add_a_second_row():
    """cafe_ml's default cold tier is cafe's (robe blocks); a medium id reads its blocks plus a row
    of its feature's second table, and a promoted medium id's hot row starts as that sum."""
    emb = ids_as_values(build_embedding("cafe_ml", SMALL, 16, 100, device=torch.device("cpu")))
    assert emb.layout.robe and emb.hash2_rows and emb.params.cold == "robe"
    x = 4242
    kjt = KeyedJaggedTensor(keys=[f.name for f in SMALL], values=torch.tensor([1, 1, 1, x]),
                            lengths=torch.ones(4, dtype=torch.int32), stride=1)
    cold = emb(kjt)[0, 3].detach().clone()
    key = emb.key_of("d", [x])
    emb.apply_update(HotMapUpdate(1, torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                                  medium_keys=key), None)
    second = emb.ebc.embedding_bags["hash2_d"].weight[emb.layout.hash2_row("d", key)][0]
    medium = emb(kjt)[0, 3].detach()
    assert torch.allclose(medium, cold + second)
    rows = TableRows(emb)
    emb.apply_update(HotMapUpdate(2, key, torch.tensor([0]), medium_keys=key), rows)
    assert torch.allclose(emb(kjt)[0, 3], medium)  # promoted: the same vector, now its own row


def test_robe_cold_share_follows_the_measured_schedule():
    """The points BENCHMARKS.md measured ("The cold share at 10x", the sweep at 1000x), and
    log-linear between them."""
    assert [hash_fraction_for(r) for r in (10, 100, 1000, 10_000)] == pytest.approx([0.9, 0.7, 0.85, 0.9])
    assert hash_fraction_for(2) == pytest.approx(0.9) and 0.7 < hash_fraction_for(30) < 0.9
    emb = _emb(10, SMALL)  # the default's hot rows get a tenth of the budget at 10x, not three tenths
    assert emb.hf == pytest.approx(0.9) and emb.layout.robe


# ---- the version schedule: rows after the next step, the map from the batch after ---------------
@pytest.mark.parametrize("method", ["cafe", "cafe_ml"])
def test_a_checkpoint_between_a_versions_two_halves_resumes_exactly(method):
    """A version is learned after every step here, so after any step one is pending (its rows due
    after the next step, its map from the batch after): state saved there and loaded into a fresh
    embedding goes on exactly as the run that was not stopped (hot maps, rows, the scheduled halves)."""

    def make():
        torch.manual_seed(0)
        return ids_as_values(build_embedding(method, SMALL, 16, 100, device=torch.device("cpu"), options=dict(
            cold="hash", admission="threshold", threshold=3.0, ml_threshold=1.0, importance="freq",
            sync_interval=1, sync_lag=0, half_life_epochs=None, decay=0.9)))

    g = torch.Generator().manual_seed(1)
    batches = [torch.stack([torch.randint(0, 30, (64,), generator=g) % f.cardinality for f in SMALL])
               for _ in range(8)]
    whole = make()
    rows = TableRows(whole)
    sums = []
    for cols in batches:
        _step(whole, rows, cols)
        sums.append(whole.state_checksum())
    first = make()
    rows = TableRows(first)
    for cols in batches[:4]:
        _step(first, rows, cols)
    state = first.local_state()
    assert state["schedule"]["to_migrate"] and state["schedule"]["to_switch"]  # a version half applied
    resumed = make()
    resumed.load_local_state(state)
    resumed.ebc.load_state_dict(first.ebc.state_dict())
    resumed.client.connect(first.client.transport)  # the merger's state (a run's coordinator keeps its own)
    rows = TableRows(resumed)
    got = sums[:4]
    for cols in batches[4:]:
        _step(resumed, rows, cols)
        got.append(resumed.state_checksum())
    assert got == sums and len(set(sums)) > 3
    assert torch.equal(resumed.ebc.embedding_bags["cafe"].weight, whole.ebc.embedding_bags["cafe"].weight)
