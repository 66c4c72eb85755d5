"""The versioned id → hot-slot map that every rank applies identically.

Sorted key array + slot array, 4 bytes each per hot id (keys are the sketch's 31-bit global keys):
``lookup`` is one ``searchsorted`` (tensor ops, CPU or GPU), and an update (promotions with slots,
demotions, the medium set for CAFE-ML) rebuilds the arrays, which hold at most one entry per hot
row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_EMPTY = torch.zeros(0, dtype=torch.int64)


@dataclass(frozen=True)
class HotMapUpdate:
    """Version ``version`` of the global hot set, as a diff against version - 1."""

    version: int
    promoted_keys: torch.Tensor = _EMPTY
    promoted_slots: torch.Tensor = _EMPTY
    demoted_keys: torch.Tensor = _EMPTY
    demoted_slots: torch.Tensor = _EMPTY
    medium_keys: torch.Tensor = _EMPTY  # CAFE-ML: the whole medium set at this version
    stats: dict[str, float] = field(default_factory=dict)


class HotMap:
    BYTES_PER_HOT = 4 + 4  # key int32 + slot int32
    BYTES_PER_MEDIUM = 4

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.keys = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.slots = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.medium = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.version = 0

    def to(self, device: torch.device | str) -> HotMap:
        self.device = torch.device(device)
        self.keys, self.slots, self.medium = (t.to(self.device) for t in (self.keys, self.slots, self.medium))
        return self

    def __len__(self) -> int:
        return int(self.keys.numel())

    @staticmethod
    def _find(sorted_keys: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if sorted_keys.numel() == 0:
            return torch.zeros_like(keys), torch.zeros_like(keys, dtype=torch.bool)
        keys = keys.to(torch.int32)
        pos = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.numel() - 1)
        return pos, sorted_keys.index_select(0, pos) == keys

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        """Hot slot of each key, or -1."""
        pos, hit = self._find(self.keys, keys)
        if self.slots.numel() == 0:
            return torch.full_like(keys, -1)
        return torch.where(hit, self.slots.index_select(0, pos).to(torch.int64), -1)

    def is_medium(self, keys: torch.Tensor) -> torch.Tensor:
        return self._find(self.medium, keys)[1]

    def apply(self, update: HotMapUpdate) -> None:
        if update.version != self.version + 1:
            raise ValueError(f"hot map at version {self.version} cannot apply update {update.version}")
        i32 = dict(device=self.device, dtype=torch.int32)
        keep = ~torch.isin(self.keys, update.demoted_keys.to(**i32))
        keys = torch.cat([self.keys[keep], update.promoted_keys.to(**i32)])
        slots = torch.cat([self.slots[keep], update.promoted_slots.to(**i32)])
        order = torch.argsort(keys)
        self.keys, self.slots = keys[order], slots[order]
        self.medium = torch.sort(update.medium_keys.to(**i32)).values
        self.version = update.version
        if self.device.type == "cuda":  # made on a pipeline's input stream, read on the default one too
            self.record_stream(torch.cuda.default_stream(self.device))

    def record_stream(self, stream: torch.Stream) -> None:
        """Keep the map's memory from reuse until ``stream``'s work queued so far is done (CUDA)."""
        for t in (self.keys, self.slots, self.medium):
            t.record_stream(stream)

    def checksum(self) -> int:
        """Digest of (version, keys, slots, medium set): equal on every rank or something is wrong."""
        k, s = self.keys.cpu().long(), self.slots.cpu().long()
        mix = (k * 1_000_003 + s) % (2**31 - 1)
        return (self.version * 7919 + int(mix.sum()) * 31 + int((self.medium.cpu().long() % 999_983).sum())) % 2**61

    def memory_bytes(self, max_hot: int, max_medium: int = 0) -> int:
        return max_hot * self.BYTES_PER_HOT + max_medium * self.BYTES_PER_MEDIUM

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys.cpu(), "slots": self.slots.cpu(), "medium": self.medium.cpu(),
                "version": torch.tensor(self.version)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.keys, self.slots, self.medium = (state[k].to(self.device, torch.int32) for k in ("keys", "slots", "medium"))
        self.version = int(state["version"])
