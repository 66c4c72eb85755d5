"""CAFE's row management under real DMP sharding across two gloo processes: a promoted id's hot row
(on whichever rank owns it) starts as the hash row it used (on whichever rank owns that), with zero
row-wise Adagrad state, and both ranks hold identical hot sets."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from dmp_helpers import free_port, init, shard


def _worker(rank: int, world: int, port: int, out_dir: str, sharding: str) -> None:
    init(rank, world, port)
    from torchrec import KeyedJaggedTensor

    from cafe_dist.embeddings import FeatureSpec, build_embedding
    from cafe_dist.embeddings.table_rows import _pieces
    from tests.values import ids_as_values

    torch.manual_seed(0)
    feats = [FeatureSpec("a", 5), FeatureSpec("b", 4000), FeatureSpec("c", 9000)]
    emb = ids_as_values(build_embedding("cafe", feats, 8, 20, options={"threshold": 6.0, "importance": "freq", "decay_mass": 1e12,
                                                           "sync_interval": 1, "sync_lag": 0, "cold": "hash",
                                                           "admission": "threshold", "half_life_epochs": None}))
    dmp, rows, plan, dense = shard(emb, world, sharding)
    owners = {t.name: plan.plan["emb.ebc"][t.name].ranks for t in emb.tables}
    g = torch.Generator().manual_seed(rank)

    def step(x: int) -> tuple[torch.Tensor, int]:
        """One training step with 4 occurrences of id x of feature c on this rank (8 globally), the
        version learned after it applied at once (``settle``: what the schedule does over the next
        step); returns x's hash row as the step left it, and x's hot slot after the step (-1: cold)."""
        ids = torch.stack([torch.randint(0, 5, (4,), generator=g), torch.randint(0, 4000, (4,), generator=g),
                           torch.full((4,), x)])
        kjt = KeyedJaggedTensor(keys=["a", "b", "c"], values=ids.reshape(-1),
                                lengths=torch.ones(12, dtype=torch.int32), stride=4)
        if dense is not None:
            dense.zero_grad()
        dmp(kjt).sum().backward()
        if dense is not None:  # data-parallel tables train with the dense optimizer
            dense.step()
        used = rows.read([(emb.TABLE, emb.hash_row("c", torch.tensor([x])))])[0]
        emb.after_step(rows)
        emb.settle(rows)
        return used, int(emb.hot_map.lookup(emb.key_of("c", [x])))

    def hot_state(slot: int) -> tuple[torch.Tensor, float]:
        """(hot row, its row-wise Adagrad state) wherever they live."""
        row = int(emb.hot_row(slot))
        momentum = torch.zeros(1)
        for state in rows.states.get(emb.TABLE, []) + rows._dense_states(emb.TABLE):
            for r0, _, local in _pieces(state):
                if r0 <= row < r0 + local.shape[0]:
                    momentum += local[row - r0].sum()
        if sharding == "data_parallel":  # every rank holds the whole state: count it once
            momentum /= world
        dist.all_reduce(momentum)
        return rows.read([(emb.TABLE, torch.tensor([row]))])[0], float(momentum)

    out = {"owners": owners}
    _, slot = step(4321)  # score 8 ≥ 6: promoted after the first step
    out["x_slot"] = slot
    step(4321)  # x trains on its hot row: the row's optimizer state becomes non-zero
    out["x_row"], out["x_momentum"] = hot_state(slot)
    emb.sketch.decay(0.0)  # x's score drops to 0 on both ranks: the next version demotes it
    used, y_slot = step(777)  # ... and y takes the freed slot
    out["x_after_decay"] = int(emb.hot_map.lookup(emb.key_of("c", [4321])))
    out["y_slot"], out["y_used"] = y_slot, used
    out["y_row"], out["y_momentum"] = hot_state(y_slot)
    out["checksum"] = emb.state_checksum()
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("sharding", ["table_wise", "data_parallel"])
def test_promotion_under_dmp_copies_the_trained_hash_row_and_resets_optimizer_state(tmp_path, sharding):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), sharding), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["x_slot"] >= 0 and r0["x_momentum"] > 0 and r0["x_after_decay"] == -1
    assert r0["y_slot"] == r0["x_slot"] == r1["y_slot"] and r0["checksum"] == r1["checksum"]
    # y's new hot row is exactly the hash row y was using (as that step's optimizer update left it),
    # not x's trained row, and its row-wise Adagrad state starts from zero
    assert torch.equal(r0["y_row"], r0["y_used"]) and torch.equal(r1["y_row"], r0["y_used"])
    assert not torch.equal(r0["y_row"], r0["x_row"])
    assert r0["y_momentum"] == 0.0
    if sharding == "table_wise":  # the tables really are spread over both ranks: copies crossed processes
        assert {tuple(r) for r in r0["owners"].values()} == {(0,), (1,)}
