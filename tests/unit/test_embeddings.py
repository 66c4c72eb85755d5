"""Every compression method as transform + plain EBC + combine: outputs, gradients, bytes, CAFE's
row management. Runs the real TorchRec EBC on CPU (unsharded; DMP runs are in test_methods_ray)."""

import pytest
import torch
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor, KeyedTensor

from cafe_dist.data.schema import CRITEO_KAGGLE_CARDINALITIES
from cafe_dist.embeddings import REGISTRY, FeatureSpec, build_embedding
from cafe_dist.embeddings.cafe import CafeOptions
from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.embeddings.table_rows import TableRows
from tests.values import ids_as_values

CPU = torch.device("cpu")
SMALL = [FeatureSpec("a", 4), FeatureSpec("b", 300), FeatureSpec("c", 20_000), FeatureSpec("d", 50_000)]
# Criteo Kaggle's 26 cardinalities at 1/100 scale: what the byte accounting must hold for
CRITEO = [FeatureSpec(f"C{i}", max(3, round(c * 0.01)) + 1) for i, c in enumerate(CRITEO_KAGGLE_CARDINALITIES)]


def _kjt(features, batch, seed=0, ids=None):
    g = torch.Generator().manual_seed(seed)
    if ids is None:
        ids = torch.stack([torch.randint(0, f.cardinality, (batch,), generator=g) for f in features])
    return KeyedJaggedTensor(keys=[f.name for f in features], values=ids.reshape(-1),
                             lengths=torch.ones(ids.numel(), dtype=torch.int32), stride=batch)


def _emb(method, ratio, features=SMALL, **opts):
    torch.manual_seed(0)
    return ids_as_values(build_embedding(method, features, 16, ratio, device=CPU, options=opts))


def test_full_equals_a_plain_torchrec_ebc_bit_for_bit():
    emb = _emb("full", 1)
    plain = EmbeddingBagCollection(tables=emb.tables, device=CPU)
    plain.load_state_dict(emb.ebc.state_dict())
    kjt = _kjt(SMALL, 32)
    out, ref = emb(kjt), plain(kjt)
    expected = torch.stack([ref[f.name] for f in SMALL], dim=1)
    assert out.shape == (32, 4, 16) and torch.equal(out, expected)


@pytest.mark.parametrize("method", list(REGISTRY))
@pytest.mark.parametrize("ratio", [10, 100, 1000])
def test_byte_accounting_matches_the_requested_ratio(method, ratio):
    emb = _emb(method, ratio, CRITEO)
    got = emb.full_embedding_bytes() / emb.embedding_bytes()
    tables = sum(t.num_embeddings * t.embedding_dim * 4 for t in emb.tables)
    listed = 8 * sum(f.cardinality - 1 for f in CRITEO if f.name in emb.budget.full)  # their lists of values
    assert emb.values_bytes() == listed
    assert emb.embedding_bytes() == tables + emb.aux_bytes() + listed
    if method == "full":  # the reference is the tables alone; full also stores its vocabulary
        assert emb.full_embedding_bytes() == tables and listed == 8 * sum(f.cardinality - 1 for f in CRITEO)
    else:
        assert got == pytest.approx(ratio, rel=0.02)
    if method in ("cafe", "cafe_ml"):
        medium = emb.hot_rows if method == "cafe_ml" else 0
        assert emb.aux_bytes() == emb.sketch.memory_bytes() + emb.hot_map.memory_bytes(emb.hot_rows, medium) > 0
    if method == "mch":
        assert emb.aux_bytes() == sum(z * 24 for z in emb.zch.values())


def test_small_features_stay_uncompressed():
    emb = _emb("hash", 100, CRITEO)
    smallest = min(CRITEO, key=lambda f: f.cardinality)
    assert smallest.name in emb.budget.full and f"t_{smallest.name}" in {t.name for t in emb.tables}
    biggest = max(CRITEO, key=lambda f: f.cardinality)
    assert biggest.name in emb.budget.compressed


@pytest.mark.parametrize("method", list(REGISTRY))
def test_gradient_reaches_every_table_the_batch_uses(method):
    emb = _emb(method, 100)
    if method in ("cafe", "cafe_ml"):  # make some ids hot and some medium so every table is used
        v = emb.values_of(_kjt(SMALL, 64))
        keys = emb.keys_of(v)[~emb.is_full[v.feature]].unique()  # b's, then c's, then d's
        hot = keys[::16]
        emb.apply_update(HotMapUpdate(1, hot, torch.arange(hot.numel()), medium_keys=keys[1::16]), None)
    out = emb(_kjt(SMALL, 64))
    assert out.shape == (64, 4, 16)
    out.pow(2).sum().backward()
    for t in emb.tables:
        grad = emb.ebc.embedding_bags[t.name].weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"{method}: no gradient reached {t.name}"


@pytest.mark.parametrize("method", list(REGISTRY))
def test_combine_finds_each_key_wherever_the_pooled_output_puts_it(method):
    """DMP returns the pooled keys table by table (full tables first), not in the order the
    transform made them: combine must give the same output and route gradients to the same keys."""
    emb = _emb(method, 100, CRITEO)
    lookups, v, routes = emb.transform(_kjt(CRITEO, 16))
    pooled = emb.ebc(lookups)
    keys, dims = list(pooled.keys()), pooled.length_per_key()
    per_key = dict(zip(keys, pooled.values().detach().split(dims, dim=1)))
    order = sorted(range(len(keys)), key=lambda i: (keys[i].split("@")[0] not in emb.budget.full, -i))
    results = []
    for ks in (keys, [keys[i] for i in order]):
        values = torch.cat([per_key[k] for k in ks], dim=1).requires_grad_(True)
        out = emb.combine(KeyedTensor(keys=ks, length_per_key=[per_key[k].shape[1] for k in ks], values=values),
                          v, routes)
        out.backward(torch.arange(out.numel(), dtype=out.dtype).view_as(out))
        results.append((out.detach(), dict(zip(ks, values.grad.split([per_key[k].shape[1] for k in ks], dim=1)))))
    (out_a, grad_a), (out_b, grad_b) = results
    assert order != list(range(len(keys))) and torch.equal(out_a, out_b)
    assert all(torch.equal(grad_a[k], grad_b[k]) for k in keys)
    assert any(g.abs().sum() > 0 for g in grad_a.values())


def test_robe_vector_is_its_blocks_side_by_side_and_full_features_read_their_own_row():
    emb = _emb("robe", 100, CRITEO)
    assert emb.budget.full and emb.compressed  # both kinds of feature in one batch
    kjt = _kjt(CRITEO, 8)
    out = emb(kjt).detach()
    ids = kjt.values().view(len(CRITEO), 8)
    array = emb.ebc.embedding_bags["robe"].weight.detach()
    for i, f in enumerate(CRITEO):
        if f.name in emb.budget.full:
            expected = emb.ebc.embedding_bags[f"t_{f.name}"].weight.detach()[ids[i]]
        else:
            key = ids[i] * len(CRITEO) + i
            expected = torch.cat([array[hash_mod(key, emb.array_rows, seed=j)] for j in range(emb.nblocks)], dim=1)
        assert torch.equal(out[:, i], expected), f.name


def test_qr_pairs_are_unique_and_mult_differs_from_add():
    emb_m, emb_a = _emb("qr", 100), _emb("qr", 100, combine="add")
    space, m, q = emb_m.shape["d"]
    ids = torch.arange(space)
    assert len(set(zip((ids // m).tolist(), (ids % m).tolist()))) == space and q * m >= space
    kjt = _kjt(SMALL, 16)
    assert not torch.allclose(emb_m(kjt), emb_a(kjt))


def test_bh_codes_are_unique_per_id():
    emb = _emb("bh", 100)
    k, m = emb.shape["d"]
    assert m ** k >= 50_000  # room for a code per value (raw values are hashed into the m^k codes)
    assert sum(k * m for k, m in emb.shape.values()) <= emb.rows_for(emb.budget.compressed_bytes)


def test_memcom_scales_the_shared_row_by_its_own_scalar():
    emb = _emb("memcom", 10)
    kjt = _kjt(SMALL, 8)
    out = emb(kjt)
    v = emb.values_of(kjt)
    d = v.feature == 3
    ids = v.ids[d]
    rows = hash_mod(ids, emb.hash_rows["d"])
    slots = hash_mod(ids, emb.scalar_slots["d"], seed=1) if emb.scalar_slots["d"] < 50_000 else ids
    scale = emb.ebc.embedding_bags["scale_d"].weight[slots // 4, slots % 4]
    expected = emb.ebc.embedding_bags["hash_d"].weight[rows] * scale.unsqueeze(1)
    assert torch.allclose(out[:, 3], expected)


# ---- CAFE row management ---------------------------------------------------------------------
def _cafe(method="cafe", **kw):
    # a hot-set version learned after every step (applied over the next: emb.settle applies it now)
    params = dict(threshold=5.0, importance="freq", decay=0.5, decay_mass=1e12, ml_threshold=2.0,
                  sync_interval=1, sync_lag=0, admission="threshold", cold="hash", half_life_epochs=None)
    params.update(kw)
    return _emb(method, 100, SMALL, **params)


def _batch_of(emb, feature, ids):
    """A batch where ``feature`` holds ``ids`` and the other features distinct ids (never hot)."""
    cols = [torch.arange(len(ids), dtype=torch.int64) % f.cardinality for f in SMALL]
    cols[feature] = torch.as_tensor(ids)
    return _kjt(SMALL, len(ids), ids=torch.stack(cols))


@pytest.mark.parametrize("method", ["cafe", "cafe_ml"])
def test_promotion_copies_exactly_the_rows_the_id_used(method):
    emb = _cafe(method)
    rows = TableRows(emb)
    x = 12345
    kjt = _batch_of(emb, 3, [x] * 4)
    before = emb(kjt)[0, 3].detach().clone()
    for _ in range(3):  # 4 occurrences per step: medium after the first, hot once the score passes 5
        emb(kjt).sum().backward()
        emb.after_step(rows)
    emb.settle(rows)
    key = emb.key_of("d", [x])
    slot = int(emb.hot_map.lookup(key))
    assert slot >= 0
    table = emb.ebc.embedding_bags[emb.TABLE].weight
    hot_row = table[slot]
    used = table[emb.hash_row("d", torch.tensor([x]))][0]
    if method == "cafe_ml":  # it was medium when promoted: its second hash row was in the sum
        used = used + emb.ebc.embedding_bags["hash2_d"].weight[
            hash_mod(emb.key_of("d", [x]), emb.hash2_rows["d"], seed=7)][0]
    assert torch.equal(hot_row, used)
    # the id's embedding does not jump when it changes tables (plain EBC here: no optimizer step)
    assert torch.allclose(emb(kjt)[0, 3], before if method == "cafe" else used)


def test_demotion_frees_the_slot_and_the_id_goes_back_to_its_hash_row():
    emb = _cafe()
    rows = TableRows(emb)
    kjt = _batch_of(emb, 3, [777] * 8)
    emb(kjt).sum().backward()
    emb.after_step(rows)
    emb.settle(rows)
    key = emb.key_of("d", [777])
    slot = int(emb.hot_map.lookup(key))
    assert slot >= 0 and len(emb.hot_map) == 1
    emb.sketch.decay(0.1)  # score 8 → 0.8 < threshold 5: the next version demotes it
    emb(_batch_of(emb, 2, [5] * 2)).sum().backward()
    stats = emb.after_step(rows)
    emb.settle(rows)
    assert stats["demoted"] == 1 and int(emb.hot_map.lookup(key)) == -1 and len(emb.hot_map) == 0
    out = emb(kjt)[0, 3]
    hash_row = emb.ebc.embedding_bags[emb.TABLE].weight[emb.hash_row("d", torch.tensor([777]))][0]
    assert torch.equal(out, hash_row)
    # the freed slot is the next one handed out
    emb(_batch_of(emb, 2, [5] * 8)).sum().backward()
    emb.after_step(rows)
    emb.settle(rows)
    assert int(emb.hot_map.lookup(emb.key_of("c", [5]))) == slot


def test_decay_runs_when_the_inserted_mass_passes_the_bound():
    emb = _cafe(decay_mass=100.0, decay=0.5)
    rows = TableRows(emb)
    kjt = _batch_of(emb, 3, [9] * 30)  # 30 ids x 2 compressed features = 60 mass per step
    emb(kjt).sum().backward()
    emb.after_step(rows)
    key = emb.key_of("d", [9])
    assert float(emb.sketch.scores(key)) == 30.0  # mass 60 < 100: no decay yet
    emb(kjt).sum().backward()
    emb.after_step(rows)
    assert float(emb.sketch.scores(key)) == 30.0  # 60 + 30 = 60 → mass 120 ≥ 100: halved once


@pytest.mark.parametrize("normalise,expected", [("field", 4.0), ("batch", 12.0)])
def test_grad_importance_comes_from_the_backward_hook(normalise, expected):
    emb = _cafe(importance="grad", threshold=1e9, normalise=normalise)
    kjt = _batch_of(emb, 3, [1, 2, 3, 4])
    out = emb(kjt)
    weights = torch.zeros_like(out)
    weights[0, 3] = 10.0  # only row 0's feature d gets a gradient... and feature c gets none
    (out * weights).sum().backward()
    emb.after_step(TableRows(emb))
    k = lambda i: emb.key_of("d", [i])  # noqa: E731
    s1, s2 = float(emb.sketch.scores(k(1))), float(emb.sketch.scores(k(2)))
    assert s1 > 0 and s2 == 0.0
    # normalised to mean 1 over field d's 4 occurrences (the artifact's rule), or over the batch's
    # 12 (3 compressed features x 4 rows): all of it on one occurrence
    assert emb.budget.compressed == ("b", "c", "d") and s1 == pytest.approx(expected)


def test_versions_arrive_every_interval_and_apply_after_the_lag():
    emb = _cafe(sync_interval=3, sync_lag=2)
    rows = TableRows(emb)
    kjt = _batch_of(emb, 3, [31] * 8)
    key = emb.key_of("d", [31])
    hot_at = []
    for step in range(1, 10):
        emb(kjt).sum().backward()
        emb.after_step(rows)
        hot_at.append(int(emb.hot_map.lookup(key)) >= 0)
        # sent at 3, 6, 9; learned at 5, 8 (the lag); rows and map after 6, 9 (.schedule)
        assert emb.hot_map.version == max(0, (step - 3) // 3)
    assert hot_at.index(True) == 5  # after step 6: version 1, from the summary sent at step 3


def test_cafe_keeps_hot_ids_out_of_the_hash_table():
    emb = _cafe()
    params = CafeOptions(threshold=5.0)
    assert params.importance == "grad" and emb.hot_rows > 0
    kjt = _batch_of(emb, 3, [42] * 8)
    emb(kjt).sum().backward()
    emb.after_step(TableRows(emb))
    emb.settle(TableRows(emb))
    routed, _, _ = emb.transform(kjt)
    slot = int(emb.hot_map.lookup(emb.key_of("d", [42])))
    # all 8 occurrences look up the id's own row, in the hot part of the table (before any hash rows)
    assert 0 <= slot < emb.hot_rows <= min(emb.hash_base.values())
    assert routed["d"].values().tolist() == [int(emb.hot_row(slot))] * 8
    assert routed.keys() == emb.names  # one key per feature, hot or not


def test_cafe_table_initialises_each_segment_like_a_table_of_its_own():
    """Hot rows and every feature's hash rows share one table; each part keeps the init scale
    (uniform ±sqrt(1/rows)) it would have as a separate table, so the layout does not change training."""
    emb = _cafe()
    weight = emb.ebc.embedding_bags[emb.TABLE].weight.detach()
    assert weight.shape[0] == emb.hot_rows + sum(emb.hash_rows.values())
    parts = [(0, emb.hot_rows)] + [(emb.hash_base[n], r) for n, r in emb.hash_rows.items()]
    for start, rows in parts:
        seg, bound = weight[emb.layout.row(torch.arange(start, start + rows))], (1.0 / rows) ** 0.5
        assert seg.abs().max() <= bound and seg.abs().max() > 0.8 * bound
    again = _cafe().ebc.embedding_bags[emb.TABLE].weight.detach()  # same seed, same table
    assert torch.equal(weight, again)


def test_memory_use_counts_hot_lookups_after_warm_up():
    """Step 1 makes id 42 of feature d hot (8 occurrences, threshold 5), a version applied after step
    2; on step 3 the 8 lookups of d are hot and the 16 of b and c (ids seen once) are not: coverage
    8 / 24, one slot in use."""
    emb = _cafe()
    rows = TableRows(emb)
    kjt = _batch_of(emb, 3, [42] * 8)
    for _ in range(3):
        emb(kjt).sum().backward()
        emb.after_step(rows)
    use = emb.memory_use()
    assert use["hot_slots"] == emb.hot_rows > 1
    assert use["hot_slots_used"] == 1.0 and use["hot_coverage"] == pytest.approx(8 / 24)
    state = emb.local_state()  # a resumed run goes on counting from where it was
    other = _cafe()
    other.load_local_state(state)
    assert other.memory_use() == use
