"""TorchRec's managed-collision hashing (MCH) with LFU eviction, as the industrial peer.

Each compressed feature gets a ``MCHManagedCollisionModule`` (the remapper inside TorchRec's
``ManagedCollisionEmbeddingBagCollection``) that maps raw ids to ``zch_size`` slots of a plain
table, keeps the most frequent ids (LFU) and sends misses to a shared last slot. TorchRec 1.8 shards
its MC-EBC only row-wise, which fbgemm allows only on CUDA, so we run the remapper as our id
transform in front of an ordinary table instead; that works with every sharding type on CPU and GPU.

The remappers are profiled with every rank's ids (all-gathered, in rank order), so all ranks keep
identical id→slot maps. Evicted slots' rows are zeroed with their optimizer state between steps
(TorchRec 1.8's unsharded ``evict`` is a no-op). ``embedding_bytes`` counts the table rows and the
remapper's per-slot state (sorted raw ids, slot mapping, LFU counts: 3 × int64); the history buffer
of the last ``eviction_interval`` batches of ids is input staging and is not counted. An exported
model keeps the map alone (2 × int64 a slot): the counts serve eviction, a training-only job.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torchrec import EmbeddingBagConfig, JaggedTensor
from torchrec.modules.mc_modules import LFU_EvictionPolicy, MCHManagedCollisionModule

from cafe_dist.collectives import all_gather_cat
from cafe_dist.data.schema import MISSING_ID
from cafe_dist.embeddings.base import CompressedEmbedding, MethodOptions
from cafe_dist.embeddings.routing import Route, Values
from cafe_dist.embeddings.spec import FLOAT_BYTES
from cafe_dist.embeddings.table_rows import TableRows
from cafe_dist.embeddings.tables import table

SLOT_STATE_BYTES = 3 * 8
RAW_ID_RANGE = MISSING_ID + 1  # the remapper sees raw values: 32-bit ones and the missing marker


class MCHOptions(MethodOptions):
    eviction_interval: int = Field(20, gt=0)  # steps between LFU evictions


class MCHEmbedding(CompressedEmbedding):
    options = MCHOptions
    pipelineable = False  # the remappers profile each batch as they remap it, and evict between steps

    def __init__(self, *args, eviction_interval: int = 20, **kwargs) -> None:
        self.eviction_interval = eviction_interval
        super().__init__(*args, **kwargs)

    def method_tables(self) -> list[EmbeddingBagConfig]:
        per_slot = self.dim * FLOAT_BYTES + SLOT_STATE_BYTES
        self.zch = self.allocate_rows(row_bytes=per_slot)
        # kept in a plain dict, not as submodules: DMP would otherwise wrap their buffers in DDP
        self.remappers: dict[str, MCHManagedCollisionModule] = {
            f.name: MCHManagedCollisionModule(
                zch_size=self.zch[f.name], device=torch.device("cpu"), eviction_policy=LFU_EvictionPolicy(),
                eviction_interval=self.eviction_interval, input_hash_size=RAW_ID_RANGE, name=f.name)
            for f in self.compressed}
        return [table(f"mch_{n}", z, self.dim, [n]) for n, z in self.zch.items()]

    def aux_bytes(self) -> int:
        return sum(z * SLOT_STATE_BYTES for z in self.zch.values())

    def state_checksum(self) -> int | None:
        total = 0
        for m in self.remappers.values():
            ids = m._mch_sorted_raw_ids.to(torch.int64)
            total += int((ids % 1_000_003 * torch.arange(1, ids.numel() + 1, device=ids.device)).sum())
        return total

    def local_state(self) -> dict:
        return {f: {"buffers": m.state_dict(), "iter": m._current_iter,
                    "last_eviction": getattr(m, "_last_eviction_iter", -1)} for f, m in self.remappers.items()}

    def load_local_state(self, state: dict) -> None:
        for f, s in state.items():
            m = self.remappers[f]
            m.load_state_dict(s["buffers"])
            m._current_iter, m._last_eviction_iter = s["iter"], s["last_eviction"]

    def serving_state(self) -> dict:
        """The id → slot map alone (sorted raw ids and their slots: 16 B a slot): the LFU counts,
        the iteration counters and the remapper's output-segment scratch serve eviction, which an
        exported model never does."""
        return {f: {"ids": m._mch_sorted_raw_ids.clone(), "slots": m._mch_remapped_ids_mapping.clone()}
                for f, m in self.remappers.items()}

    def load_serving_state(self, state: dict) -> None:
        for f, s in state.items():
            m = self.remappers[f]
            m._mch_sorted_raw_ids.copy_(s["ids"])
            m._mch_remapped_ids_mapping.copy_(s["slots"])

    def train(self, mode: bool = True) -> MCHEmbedding:
        super().train(mode)
        for m in self.remappers.values():
            m.train(mode)
        return self

    def routes(self, v: Values) -> list[Route]:
        out = v.ids.clone()
        profile = self.training and torch.is_grad_enabled()
        if profile:  # every rank profiles the global batch, so every rank's maps stay identical
            every = all_gather_cat(torch.stack([v.ids, v.feature]).t().contiguous())
        for i, f in enumerate(self.names):
            m = self.remappers.get(f)
            if m is None:
                continue
            sel = v.feature == i
            if m._mch_sorted_raw_ids.device != v.ids.device:
                m.to(v.ids.device)
            if profile:
                g = every[every[:, 1] == i, 0]
                m.profile({f: JaggedTensor(values=g, lengths=torch.ones_like(g, dtype=torch.int32))})
            ids = v.ids[sel]
            remapped = m.remap({f: JaggedTensor(values=ids, lengths=torch.ones_like(ids, dtype=torch.int32))})
            out[sel] = remapped[f].values()
        return [Route("", torch.ones_like(self.is_full), out)]

    @torch.no_grad()
    def after_step(self, rows: TableRows | None = None) -> dict[str, float]:
        evicted = 0
        for f, m in self.remappers.items():
            slots = m.evict()
            if slots is None or slots.numel() == 0:
                continue
            evicted += slots.numel()
            if rows is not None:
                slots = slots.cpu().to(torch.int64)
                rows.write(f"mch_{f}", slots, torch.zeros((slots.numel(), self.dim)))
                rows.reset_state(f"mch_{f}", slots)
        return {"evicted": float(evicted)}
