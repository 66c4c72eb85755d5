"""HotSketch: bucketed Space-Saving that scores ids and hands hot ones a unique embedding slot.

State is ``w`` buckets × ``c`` cells (default 4); each cell holds (id, score, error, slot).
- A known id adds its importance to its cell's score.
- A newcomer takes an empty cell, or else replaces the bucket's lowest-scoring *non-hot* cell and
  inherits its score; the inherited amount is kept as the cell's ``error`` (Space-Saving's per-cell
  error term). Hot cells are never evicted, only demoted by decay.
- Promotion needs ``score - error >= threshold``: a guaranteed lower bound on the id's own mass, so
  newcomers that merely inherited a large count are not promoted (this is where the reference
  HotSketch, which promotes on the inherited count, admits false hot ids).
- ``decay(factor)`` scales scores; hot ids that fall below the threshold are demoted, slot freed.

Two insert paths over the same arrays: an exact sequential kernel compiled with numba (CPU), and a
batched tensor path (GPU workers), where newcomers of one batch compete for a bucket's cells by
weight. ``lookup`` (id → hot slot or -1) is pure tensor ops, so the id transform runs anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
EMPTY = -1
_NO_WEIGHTS = np.zeros(1, np.float32)


@numba.njit(cache=True, inline="always")
def _bucket_of(x: np.int64, w: np.int64) -> np.int64:
    h = np.uint64(x) * np.uint64(0x9E3779B97F4A7C15)
    return np.int64((h >> np.uint64(32)) % np.uint64(w))


@numba.njit(cache=True)
def _insert_kernel(ids, weights, unit, cell_id, cell_score, cell_err, cell_slot, free_slots, free_top,
                   threshold, err_weight, promo_ids, promo_slots):
    w, c = cell_id.shape
    n_promo = 0
    for i in range(ids.shape[0]):
        x = ids[i]
        s = np.float32(1.0) if unit else weights[i]
        b = _bucket_of(x, w)
        hit = -1
        empty = -1
        victim = -1
        vscore = np.inf
        for j in range(c):
            cid = cell_id[b, j]
            if cid == x:
                hit = j
                break
            if cid == -1:
                if empty < 0:
                    empty = j
            elif cell_slot[b, j] < 0 and cell_score[b, j] < vscore:
                vscore = cell_score[b, j]
                victim = j
        if hit >= 0:
            cell_score[b, hit] += s
        elif empty >= 0:
            hit = empty
            cell_id[b, hit] = x
            cell_score[b, hit] = s
            cell_err[b, hit] = 0.0
        elif victim >= 0:
            hit = victim
            cell_id[b, hit] = x
            cell_err[b, hit] = vscore
            cell_score[b, hit] = vscore + s
        else:
            continue  # every cell of the bucket is hot: the id stays cold
        if (cell_slot[b, hit] < 0 and cell_score[b, hit] - err_weight * cell_err[b, hit] >= threshold
                and free_top[0] > 0):
            free_top[0] -= 1
            slot = free_slots[free_top[0]]
            cell_slot[b, hit] = slot
            promo_ids[n_promo] = x
            promo_slots[n_promo] = slot
            n_promo += 1
    return n_promo


@dataclass(frozen=True)
class SketchUpdate:
    """Hot-set changes from one insert or decay: ids and the slots they gained or gave back."""

    promoted_ids: torch.Tensor
    promoted_slots: torch.Tensor
    demoted_ids: torch.Tensor
    demoted_slots: torch.Tensor

    @property
    def num_promoted(self) -> int:
        return int(self.promoted_ids.numel())

    @property
    def num_demoted(self) -> int:
        return int(self.demoted_ids.numel())


def _update(device: torch.device, promoted: tuple[torch.Tensor, torch.Tensor] | None = None,
            demoted: tuple[torch.Tensor, torch.Tensor] | None = None) -> SketchUpdate:
    """A SketchUpdate whose missing half is empty."""
    none = (torch.zeros(0, dtype=torch.int64, device=device),) * 2
    (pi, ps), (di, ds) = promoted or none, demoted or none
    return SketchUpdate(pi, ps, di, ds)


class HotSketch:
    """Bucketed Space-Saving with hot slots. Tensors live on ``device``; numba runs on CPU tensors."""

    def __init__(self, num_buckets: int, num_hot_slots: int, threshold: float, cells: int = 4,
                 device: torch.device | str = "cpu", use_numba: bool | None = None,
                 error_weight: float = 0.5) -> None:
        if num_buckets <= 0 or cells <= 0 or num_hot_slots < 0:
            raise ValueError("num_buckets and cells must be positive, num_hot_slots non-negative")
        self.w, self.c = num_buckets, cells
        self.num_hot_slots = num_hot_slots
        self.threshold = float(threshold)
        self.error_weight = float(error_weight)
        self.device = torch.device(device)
        self.use_numba = (self.device.type == "cpu") if use_numba is None else use_numba
        self.cell_id = torch.full((num_buckets, cells), EMPTY, dtype=torch.int64, device=self.device)
        self.cell_score = torch.zeros((num_buckets, cells), dtype=torch.float32, device=self.device)
        self.cell_err = torch.zeros_like(self.cell_score)
        self.cell_slot = torch.full((num_buckets, cells), EMPTY, dtype=torch.int32, device=self.device)
        # stack of free hot slots; the top is at free_top - 1 (slot 0 handed out first)
        self.free_slots = torch.arange(num_hot_slots - 1, -1, -1, dtype=torch.int32, device=self.device)
        self.free_top = torch.tensor([num_hot_slots], dtype=torch.int64)
        self.total_promotions = 0
        self.total_demotions = 0

    # ---- queries ---------------------------------------------------------------------------
    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        h = ids.to(torch.int64) * torch.tensor(int(_GOLDEN.astype(np.int64)), device=ids.device)
        return ((h >> 32) & 0xFFFFFFFF) % self.w

    def _find(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.bucket(ids)
        match = self.cell_id[b] == ids.unsqueeze(1)
        found = match.any(dim=1)
        return b, torch.where(found, match.to(torch.int8).argmax(dim=1), torch.full_like(b, -1))

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Hot slot of each id, or -1 when it is not hot."""
        b, j = self._find(ids)
        slot = self.cell_slot[b, j.clamp(min=0)].to(torch.int64)
        return torch.where(j >= 0, slot, torch.full_like(slot, -1))

    def scores(self, ids: torch.Tensor) -> torch.Tensor:
        b, j = self._find(ids)
        return torch.where(j >= 0, self.cell_score[b, j.clamp(min=0)], torch.zeros_like(b, dtype=torch.float32))

    def hot_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, slots) of every hot cell."""
        mask = self.cell_slot >= 0
        return self.cell_id[mask], self.cell_slot[mask].to(torch.int64)

    @property
    def num_hot(self) -> int:
        return self.num_hot_slots - int(self.free_top[0])

    def memory_bytes(self) -> int:
        cells = self.w * self.c * (8 + 4 + 4 + 4)  # id, score, error, slot
        return cells + self.num_hot_slots * 4  # + free-slot stack

    # ---- updates ---------------------------------------------------------------------------
    def insert(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> SketchUpdate:
        """Add a batch of ids with importance ``weights`` (default 1 each: frequency)."""
        ids = ids.reshape(-1).to(torch.int64)
        if ids.numel() == 0:
            return _update(self.device)
        if self.use_numba:
            return self._insert_numba(ids, weights)
        if weights is None:
            weights = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        weights = weights.reshape(-1).to(torch.float32)
        return self._insert_tensor(ids.to(self.device), weights.to(self.device))

    def _state_arrays(self) -> tuple[np.ndarray, ...]:
        """numpy views sharing memory with the state tensors (re-made when tensors are replaced)."""
        key = tuple(t.data_ptr() for t in (self.cell_id, self.cell_score, self.cell_err, self.cell_slot,
                                            self.free_slots))
        if getattr(self, "_views_key", None) != key:
            self._views = (self.cell_id.numpy(), self.cell_score.numpy(), self.cell_err.numpy(),
                           self.cell_slot.numpy(), self.free_slots.numpy(), self.free_top.numpy())
            self._views_key = key
        return self._views

    def _insert_numba(self, ids: torch.Tensor, weights: torch.Tensor | None) -> SketchUpdate:
        n = min(ids.numel(), self.num_hot_slots)
        promo_ids = np.empty(n, np.int64)
        promo_slots = np.empty(n, np.int32)
        unit = weights is None
        w = _NO_WEIGHTS if unit else weights.reshape(-1).to(torch.float32).cpu().numpy()
        k = _insert_kernel(ids.cpu().numpy(), w, unit, *self._state_arrays(), np.float32(self.threshold),
                           np.float32(self.error_weight), promo_ids, promo_slots)
        self.total_promotions += k
        return _update(self.device, promoted=(torch.from_numpy(promo_ids[:k]),
                                              torch.from_numpy(promo_slots[:k]).long()))

    def _insert_tensor(self, ids: torch.Tensor, weights: torch.Tensor) -> SketchUpdate:
        uid, inv = torch.unique(ids, return_inverse=True)
        uw = torch.zeros(uid.shape, dtype=torch.float32, device=ids.device).index_add_(0, inv, weights)
        b, j = self._find(uid)
        known = j >= 0
        flat_score = self.cell_score.view(-1)
        flat_score.index_add_(0, (b * self.c + j)[known], uw[known])
        # Newcomers compete per bucket, heaviest first: the heaviest replaces the bucket's weakest
        # non-hot cell (as sequential Space-Saving would), later ones only take empty cells. The
        # mass of the rest is what sequential Space-Saving would have churned through that weakest
        # cell, so it is added to the cell as inherited error.
        nb, nw, nid = b[~known], uw[~known], uid[~known]
        if nid.numel():
            order = torch.argsort(nw, descending=True, stable=True)
            order = order[torch.argsort(nb[order], stable=True)]
            nb, nw, nid = nb[order], nw[order], nid[order]
            rank = torch.arange(nb.numel(), device=nb.device) - torch.searchsorted(nb, nb)
            empty = self.cell_id[nb] == EMPTY
            key = torch.where(empty, torch.full_like(self.cell_score[nb], -1.0), self.cell_score[nb])
            key = torch.where(self.cell_slot[nb] >= 0, torch.full_like(key, float("inf")), key)
            cand = torch.argsort(key, dim=1)
            cell = cand.gather(1, rank.clamp(max=self.c - 1).unsqueeze(1)).squeeze(1)
            takes = (rank < self.c) & (self.cell_slot[nb, cell] < 0) & ((rank == 0) | empty.gather(1, cell.unsqueeze(1)).squeeze(1))
            churn = ~takes & (self.cell_slot[nb, cand[:, 0]] < 0)
            churn_w = torch.zeros(self.w, dtype=torch.float32, device=nb.device).index_add_(0, nb[churn], nw[churn])
            nb, nw, nid, cell = nb[takes], nw[takes], nid[takes], cell[takes]
            inherited = torch.where(self.cell_id[nb, cell] == EMPTY, torch.zeros_like(nw),
                                    self.cell_score[nb, cell])
            self.cell_id[nb, cell] = nid
            self.cell_err[nb, cell] = inherited
            self.cell_score[nb, cell] = inherited + nw
            # churned mass lands on the bucket's weakest non-hot cell, as inherited error
            hit = churn_w > 0
            if hit.any():
                hb = hit.nonzero().squeeze(1)
                hkey = torch.where(self.cell_slot[hb] >= 0, torch.full_like(self.cell_score[hb], float("inf")),
                                   self.cell_score[hb])
                hc = hkey.argmin(dim=1)
                self.cell_score[hb, hc] += churn_w[hb]
                self.cell_err[hb, hc] += churn_w[hb]
        return self._promote_tensor()

    def _promote_tensor(self) -> SketchUpdate:
        eligible = (self.cell_slot < 0) & (self.cell_id != EMPTY) & (self.cell_score - self.error_weight * self.cell_err >= self.threshold)
        idx = torch.nonzero(eligible.view(-1)).squeeze(1)
        free = int(self.free_top[0])
        if idx.numel() == 0 or free == 0:
            return _update(self.device)
        if idx.numel() > free:  # not enough slots: the strongest candidates win
            idx = idx[torch.topk(self.cell_score.view(-1)[idx], free).indices]
        k = idx.numel()
        slots = self.free_slots[free - k:free].flip(0)
        self.free_top[0] = free - k
        self.cell_slot.view(-1)[idx] = slots
        self.total_promotions += k
        return _update(self.device, promoted=(self.cell_id.view(-1)[idx].clone(), slots.long()))

    def decay(self, factor: float) -> SketchUpdate:
        """Scale scores by ``factor``; hot ids that fall below the threshold give their slot back."""
        self.cell_score.mul_(factor)
        self.cell_err.mul_(factor)
        demote = (self.cell_slot >= 0) & (self.cell_score < self.threshold)
        ids, slots = self.cell_id[demote].clone(), self.cell_slot[demote].to(torch.int64)
        if ids.numel():
            self._release(slots)
            self.cell_slot[demote] = EMPTY
            self.total_demotions += ids.numel()
        return _update(self.device, demoted=(ids, slots))

    def _release(self, slots: torch.Tensor) -> None:
        """Push freed hot slots back onto the free-slot stack."""
        free = int(self.free_top[0])
        self.free_slots[free:free + slots.numel()] = slots.to(torch.int32)
        self.free_top[0] = free + slots.numel()

    # ---- merge and persistence -------------------------------------------------------------
    def merge(self, other: HotSketch) -> None:
        """Union with ``other`` (same shape): scores of common ids add up; each bucket keeps its
        top-``c`` cells, hot cells first. Hot slots are re-assigned by promotion afterwards."""
        if (other.w, other.c) != (self.w, self.c):
            raise ValueError("can only merge sketches of the same shape")
        ids = torch.cat([self.cell_id, other.cell_id], dim=1)
        score = torch.cat([self.cell_score, other.cell_score], dim=1)
        err = torch.cat([self.cell_err, other.cell_err], dim=1)
        hot = torch.cat([self.cell_slot, torch.full_like(other.cell_slot, EMPTY)], dim=1)
        # fold duplicates of the same id within a bucket into its first occurrence
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)) & (ids.unsqueeze(2) != EMPTY)
        earlier = torch.tril(torch.ones(2 * self.c, 2 * self.c, dtype=torch.bool, device=ids.device), -1)
        dup = (same & earlier.unsqueeze(0)).any(dim=2)  # cell repeats an earlier cell
        owner_score = (same.float() * score.unsqueeze(1)).sum(dim=2)
        owner_err = (same.float() * err.unsqueeze(1)).sum(dim=2)
        owner_hot = torch.where(same, hot.unsqueeze(1), torch.full_like(hot.unsqueeze(1), EMPTY)).amax(dim=2)
        score = torch.where(ids == EMPTY, torch.zeros_like(score), owner_score)
        err = torch.where(ids == EMPTY, torch.zeros_like(err), owner_err)
        hot = torch.where(ids == EMPTY, torch.full_like(hot, EMPTY), owner_hot)
        key = torch.where(dup | (ids == EMPTY), torch.full_like(score, -float("inf")), score)
        key = torch.where(hot >= 0, torch.full_like(key, float("inf")), key)
        keep = torch.argsort(key, dim=1, descending=True)[:, : self.c]
        kept_ids = ids.gather(1, keep)
        valid = key.gather(1, keep) > -float("inf")
        new_hot = hot.gather(1, keep)
        # hot cells that lost their place give their slot back
        lost = (self.cell_slot >= 0) & ~torch.isin(self.cell_slot, new_hot[new_hot >= 0])
        if lost.any():
            self._release(self.cell_slot[lost])
        self.cell_id = torch.where(valid, kept_ids, torch.full_like(kept_ids, EMPTY))
        self.cell_score = torch.where(valid, score.gather(1, keep), torch.zeros_like(self.cell_score))
        self.cell_err = torch.where(valid, err.gather(1, keep), torch.zeros_like(self.cell_err))
        self.cell_slot = torch.where(valid, new_hot, torch.full_like(new_hot, EMPTY)).to(torch.int32)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"cell_id": self.cell_id.clone(), "cell_score": self.cell_score.clone(),
                "cell_err": self.cell_err.clone(), "cell_slot": self.cell_slot.clone(),
                "free_slots": self.free_slots.clone(), "free_top": self.free_top.clone(),
                "meta": torch.tensor([self.w, self.c, self.num_hot_slots, self.total_promotions,
                                      self.total_demotions], dtype=torch.int64),
                "threshold": torch.tensor(self.threshold)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        w, c, slots, promos, demos = (int(v) for v in state["meta"])
        if (w, c, slots) != (self.w, self.c, self.num_hot_slots):
            raise ValueError(f"sketch shape {(w, c, slots)} does not match {(self.w, self.c, self.num_hot_slots)}")
        for name in ("cell_id", "cell_score", "cell_err", "cell_slot", "free_slots"):
            setattr(self, name, state[name].to(self.device).clone())
        self.free_top = state["free_top"].clone()
        self.threshold = float(state["threshold"])
        self.total_promotions, self.total_demotions = promos, demos
