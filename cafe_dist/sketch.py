"""HotSketch: bucketed Space-Saving that scores ids and hands hot ones a unique embedding slot.

State is ``w`` buckets × ``c`` cells (default 4); each cell holds (id, score, error, slot).
- A known id adds its importance to its cell's score.
- A newcomer takes an empty cell, or else replaces the bucket's lowest-scoring *non-hot* cell and
  inherits its score; the inherited amount is kept as the cell's ``error`` (Space-Saving's per-cell
  error term). Hot cells are never evicted, only demoted by decay.
- ``admission="randomized"`` (default) admits a newcomer to a full bucket only with probability
  w / (min score + w) (RAP, Ben Basat et al., INFOCOM 2017): the long tail of one-off ids no longer
  churns the weakest cells upward, which is what lets mid-heavy ids survive at 4 cells per hot id
  (recall of the true top 1 % at a sketch of 4x the hot set: ~0.96 against ~0.6 for
  ``admission="always"``, plain Space-Saving). Expected scores stay unbiased.
- Promotion needs ``score - error_weight · error >= threshold``: (with weight 1) a guaranteed lower
  bound on the id's own mass, so newcomers that merely inherited a large count are not promoted
  (this is where the reference HotSketch, which promotes on the inherited count, admits false hot
  ids).
- ``decay(factor)`` scales scores; hot ids that fall below the threshold are demoted, slot freed.

Layout: one int32 array (w, c, 4) with fields id, score (float32 bits), error (float32 bits), slot,
so a 4-cell bucket is one 64-byte cache line: an insert touches one line. Ids must fit in 31 bits
(global keys of a CriteoTB-sized vocabulary do).

Two insert paths over the same array: an exact sequential kernel compiled with numba (CPU), and a
batched tensor path (GPU workers), where newcomers of one batch compete for a bucket's cells by
weight. ``lookup`` (id → hot slot or -1) is pure tensor ops, so the id transform runs anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch

EMPTY = -1
MAX_ID = 2**31 - 2
CELL_BYTES = 16  # id, score, error, slot
_ID, _SCORE, _ERR, _SLOT = 0, 1, 2, 3
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_NO_WEIGHTS = np.zeros(1, np.float32)


@numba.njit(cache=True, boundscheck=False)
def _insert_kernel(ids, weights, unit, st, sf, free_slots, free_top, threshold, err_weight,
                   promo_ids, promo_slots, randomized, rng):
    """Sequential Space-Saving over ``ids``. ``st`` is the state flattened to int32 (16 words per
    4-cell bucket), ``sf`` the same memory as float32. The 4-cell bucket probe is unrolled: that,
    and one cache line per bucket, is what makes this ~1.5x faster than a generic cell loop.
    With ``randomized`` a newcomer takes a full bucket's weakest cell only with probability
    s / (score + s) (xorshift64 state in ``rng``, so equal streams give equal sketches).
    Returns the number of promotions written to promo_ids/slots."""
    w = st.shape[0] // 16
    n_promo = 0
    r = rng[0]
    for i in range(ids.shape[0]):
        x = np.int32(ids[i])
        s = np.float32(1.0) if unit else weights[i]
        h = np.uint64(ids[i]) * np.uint64(0x9E3779B97F4A7C15)
        base = np.int64(((h >> np.uint64(32)) * np.uint64(w)) >> np.uint64(32)) * 16
        if st[base] == x:
            hit = base
        elif st[base + 4] == x:
            hit = base + 4
        elif st[base + 8] == x:
            hit = base + 8
        elif st[base + 12] == x:
            hit = base + 12
        else:
            hit = -1
        if hit >= 0:
            sf[hit + 1] += s
        else:  # first empty cell, else the weakest non-hot cell; all hot: the id stays cold
            victim = -1
            vscore = np.float32(np.inf)
            for j in range(base, base + 16, 4):
                if st[j] == -1:
                    victim = j
                    vscore = np.float32(-1.0)
                    break
                if st[j + 3] < 0 and sf[j + 1] < vscore:
                    vscore = sf[j + 1]
                    victim = j
            if victim < 0:
                continue
            if randomized and vscore >= 0:
                r ^= r << np.uint64(13)
                r ^= r >> np.uint64(7)
                r ^= r << np.uint64(17)
                if np.float32((r >> np.uint64(40)) * (1.0 / 16777216.0)) * (vscore + s) >= s:
                    continue  # not admitted: the id stays out, the bucket is unchanged
            hit = victim
            st[hit] = x
            if vscore < 0:
                sf[hit + 1] = s
                sf[hit + 2] = 0.0
            else:
                sf[hit + 2] = vscore
                sf[hit + 1] = vscore + s
        if st[hit + 3] < 0 and sf[hit + 1] - err_weight * sf[hit + 2] >= threshold and free_top[0] > 0:
            free_top[0] -= 1
            slot = free_slots[free_top[0]]
            st[hit + 3] = slot
            promo_ids[n_promo] = x
            promo_slots[n_promo] = slot
            n_promo += 1
    rng[0] = r
    return n_promo


@numba.njit(cache=True, boundscheck=False)
def _promote_kernel(st, sf, free_slots, free_top, threshold, err_weight, promo_ids, promo_slots):
    """Give a slot to every qualifying cell (after a merge), in bucket order while slots last."""
    n = 0
    for j in range(0, st.shape[0], 4):
        if (st[j] != -1 and st[j + 3] < 0 and sf[j + 1] - err_weight * sf[j + 2] >= threshold
                and free_top[0] > 0):
            free_top[0] -= 1
            slot = free_slots[free_top[0]]
            st[j + 3] = slot
            promo_ids[n] = st[j]
            promo_slots[n] = slot
            n += 1
    return n


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


_EMPTY: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _update(device: torch.device, promoted: tuple[torch.Tensor, torch.Tensor] | None = None,
            demoted: tuple[torch.Tensor, torch.Tensor] | None = None) -> SketchUpdate:
    """A SketchUpdate whose missing half is empty (shared empty tensors: this runs per batch)."""
    none = _EMPTY.get(device)
    if none is None:
        none = _EMPTY[device] = (torch.zeros(0, dtype=torch.int64, device=device),) * 2
    (pi, ps), (di, ds) = promoted or none, demoted or none
    return SketchUpdate(pi, ps, di, ds)


class HotSketch:
    """Bucketed Space-Saving with hot slots. Tensors live on ``device``; numba runs on CPU tensors."""

    def __init__(self, num_buckets: int, num_hot_slots: int, threshold: float, cells: int = 4,
                 device: torch.device | str = "cpu", use_numba: bool | None = None,
                 error_weight: float = 0.5, admission: str = "randomized", seed: int = 0) -> None:
        if num_buckets <= 0 or cells <= 0 or num_hot_slots < 0:
            raise ValueError("num_buckets and cells must be positive, num_hot_slots non-negative")
        if use_numba and cells != 4:
            raise ValueError("the numba kernel is specialised for 4 cells per bucket")
        if admission not in ("randomized", "always"):
            raise ValueError(f"admission must be 'randomized' or 'always', got {admission!r}")
        self.w, self.c = num_buckets, cells
        self.randomized = admission == "randomized"
        # xorshift64 state for admission draws (numba path); a torch generator for the tensor path
        self.rng = np.array([(0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) % 2**64 or 1], dtype=np.uint64)
        self.gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
        self.num_hot_slots = num_hot_slots
        self.threshold = float(threshold)
        self.error_weight = float(error_weight)
        self.device = torch.device(device)
        self.use_numba = (self.device.type == "cpu" and cells == 4) if use_numba is None else use_numba
        self.state = torch.zeros((num_buckets, cells, 4), dtype=torch.int32, device=self.device)
        self.state[..., _ID] = EMPTY
        self.state[..., _SLOT] = EMPTY
        # stack of free hot slots; the top is at free_top - 1 (slot 0 handed out first)
        self.free_slots = torch.arange(num_hot_slots - 1, -1, -1, dtype=torch.int32, device=self.device)
        self.free_top = torch.tensor([num_hot_slots], dtype=torch.int64)
        self.total_promotions = 0
        self.total_demotions = 0
        self._promo_buf = (np.empty(0, np.int64), np.empty(0, np.int32))
        self._no_change = _update(self.device)

    @staticmethod
    def bytes_per_slot(cells: int = 4, buckets_per_slot: float = 1.0) -> float:
        """Sketch bytes per hot slot when sized at ``buckets_per_slot`` buckets per slot."""
        return buckets_per_slot * cells * CELL_BYTES + 4

    # ---- field views (all alias ``state``) -------------------------------------------------
    @property
    def cell_id(self) -> torch.Tensor:
        return self.state[..., _ID]

    @property
    def cell_score(self) -> torch.Tensor:
        return self.state[..., _SCORE].view(torch.float32)

    @property
    def cell_err(self) -> torch.Tensor:
        return self.state[..., _ERR].view(torch.float32)

    @property
    def cell_slot(self) -> torch.Tensor:
        return self.state[..., _SLOT]

    def to(self, device: torch.device | str) -> HotSketch:
        device = torch.device(device)
        self.state, self.free_slots = self.state.to(device), self.free_slots.to(device)
        self.device = device
        self.use_numba = device.type == "cpu" and self.c == 4
        self.gen = torch.Generator(device=device).manual_seed(int(self.rng[0] % (2**63)))
        return self

    # ---- queries ---------------------------------------------------------------------------
    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        h = ids.to(torch.int64) * _GOLDEN  # same multiply-shift range reduction as the kernel
        return (((h >> 32) & 0xFFFFFFFF) * self.w) >> 32

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
        return self.cell_id[mask].to(torch.int64), self.cell_slot[mask].to(torch.int64)

    def candidates(self, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of every occupied cell scoring at least ``min_score``: the summary a
        worker sends to the coordinator."""
        score = self.cell_score
        keep = (self.cell_id != EMPTY) & (score >= min_score)
        return (self.cell_id[keep].to(torch.int64).cpu().numpy(), score[keep].cpu().numpy())

    @property
    def num_hot(self) -> int:
        return self.num_hot_slots - int(self.free_top[0])

    def memory_bytes(self) -> int:
        return self.w * self.c * CELL_BYTES + self.num_hot_slots * 4  # cells + free-slot stack

    # ---- updates ---------------------------------------------------------------------------
    def insert(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> SketchUpdate:
        """Add a batch of ids with importance ``weights`` (default 1 each: frequency)."""
        ids = ids.reshape(-1)
        if ids.numel() == 0:
            return _update(self.device)
        if self.use_numba:
            return self._insert_numba(ids, weights)
        if weights is None:
            weights = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        weights = weights.reshape(-1).to(torch.float32)
        return self._insert_tensor(ids.to(self.device, torch.int64), weights.to(self.device))

    def _views(self) -> tuple[np.ndarray, ...]:
        """numpy views sharing memory with the state tensors (re-made when tensors are replaced)."""
        key = (self.state.data_ptr(), self.free_slots.data_ptr())
        if getattr(self, "_views_key", None) != key:
            st = self.state.numpy().reshape(-1)
            self._np = (st, st.view(np.float32), self.free_slots.numpy(), self.free_top.numpy())
            self._views_key = key
        return self._np

    def _buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if self._promo_buf[0].shape[0] < n and self._promo_buf[0].shape[0] < self.num_hot_slots:
            n = min(n, self.num_hot_slots)
            self._promo_buf = (np.empty(n, np.int64), np.empty(n, np.int32))
        return self._promo_buf

    def _promoted(self, k: int) -> SketchUpdate:
        if k == 0:
            return self._no_change
        self.total_promotions += k
        pi, ps = self._promo_buf
        return _update(self.device, promoted=(torch.from_numpy(pi[:k].copy()),
                                              torch.from_numpy(ps[:k].astype(np.int64))))

    def _insert_numba(self, ids: torch.Tensor, weights: torch.Tensor | None) -> SketchUpdate:
        ids_np = ids.cpu().numpy()
        unit = weights is None
        w = _NO_WEIGHTS if unit else weights.reshape(-1).to(torch.float32).cpu().numpy()
        pi, ps = self._buffers(ids_np.shape[0])
        st, sf, fs, ft = self._views()
        k = _insert_kernel(ids_np, w, unit, st, sf, fs, ft, self._thr32, self._ew32, pi, ps,
                           self.randomized, self.rng)
        return self._promoted(k)

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        self._thr32 = np.float32(value)

    @property
    def error_weight(self) -> float:
        return self._error_weight

    @error_weight.setter
    def error_weight(self, value: float) -> None:
        self._error_weight = float(value)
        self._ew32 = np.float32(value)

    def promote(self) -> SketchUpdate:
        """Give slots to every cell that qualifies (used after ``merge``, which adds up scores)."""
        if not self.use_numba:
            return self._promote_tensor()
        pi, ps = self._buffers(self.num_hot_slots)
        k = _promote_kernel(*self._views(), self._thr32, self._ew32, pi, ps)
        return self._promoted(k)

    def _insert_tensor(self, ids: torch.Tensor, weights: torch.Tensor) -> SketchUpdate:
        uid, inv = torch.unique(ids, return_inverse=True)
        uw = torch.zeros(uid.shape, dtype=torch.float32, device=ids.device).index_add_(0, inv, weights)
        b, j = self._find(uid)
        known = j >= 0
        score = self.cell_score
        score.index_put_((b[known], j[known]), uw[known], accumulate=True)
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
            key = torch.where(empty, torch.full_like(score[nb], -1.0), score[nb])
            key = torch.where(self.cell_slot[nb] >= 0, torch.full_like(key, float("inf")), key)
            cand = torch.argsort(key, dim=1)
            cell = cand.gather(1, rank.clamp(max=self.c - 1).unsqueeze(1)).squeeze(1)
            into_empty = empty.gather(1, cell.unsqueeze(1)).squeeze(1)
            takes = (rank < self.c) & (self.cell_slot[nb, cell] < 0) & ((rank == 0) | into_empty)
            if self.randomized:  # RAP: replacing a live cell needs a won draw, the rest are dropped
                u = torch.rand(nw.shape, generator=self.gen, device=nw.device)
                takes = takes & (into_empty | (u * (score[nb, cell] + nw) < nw))
                churn = torch.zeros_like(takes)
            else:
                churn = ~takes & (self.cell_slot[nb, cand[:, 0]] < 0)
            churn_w = torch.zeros(self.w, dtype=torch.float32, device=nb.device).index_add_(0, nb[churn], nw[churn])
            nb, nw, nid, cell = nb[takes], nw[takes], nid[takes], cell[takes]
            inherited = torch.where(self.cell_id[nb, cell] == EMPTY, torch.zeros_like(nw), score[nb, cell])
            self.cell_id[nb, cell] = nid.to(torch.int32)
            self.cell_err[nb, cell] = inherited
            score[nb, cell] = inherited + nw
            # churned mass lands on the bucket's weakest non-hot cell, as inherited error
            hit = churn_w > 0
            if hit.any():
                hb = hit.nonzero().squeeze(1)
                hkey = torch.where(self.cell_slot[hb] >= 0, torch.full_like(score[hb], float("inf")), score[hb])
                hc = hkey.argmin(dim=1)
                score[hb, hc] += churn_w[hb]
                self.cell_err[hb, hc] += churn_w[hb]
        return self._promote_tensor()

    def _promote_tensor(self) -> SketchUpdate:
        score = self.cell_score
        eligible = ((self.cell_slot < 0) & (self.cell_id != EMPTY)
                    & (score - self.error_weight * self.cell_err >= self.threshold))
        bb, jj = torch.nonzero(eligible, as_tuple=True)
        free = int(self.free_top[0])
        if bb.numel() == 0 or free == 0:
            return _update(self.device)
        if bb.numel() > free:  # not enough slots: the strongest candidates win
            top = torch.topk(score[bb, jj], free).indices
            bb, jj = bb[top], jj[top]
        k = bb.numel()
        slots = self.free_slots[free - k:free].flip(0)
        self.free_top[0] = free - k
        self.cell_slot[bb, jj] = slots
        self.total_promotions += k
        return _update(self.device, promoted=(self.cell_id[bb, jj].to(torch.int64), slots.long()))

    def decay(self, factor: float) -> SketchUpdate:
        """Scale scores by ``factor``; hot ids that fall below the threshold give their slot back."""
        self.cell_score.mul_(factor)
        self.cell_err.mul_(factor)
        demote = (self.cell_slot >= 0) & (self.cell_score < self.threshold)
        ids, slots = self.cell_id[demote].to(torch.int64), self.cell_slot[demote].to(torch.int64)
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
        top-``c`` cells, hot cells first. Call :meth:`promote` afterwards to hand slots to ids
        whose summed score now qualifies."""
        if (other.w, other.c) != (self.w, self.c):
            raise ValueError("can only merge sketches of the same shape")
        other_state = other.state.to(self.device)
        ids = torch.cat([self.cell_id, other_state[..., _ID]], dim=1)
        score = torch.cat([self.cell_score, other_state[..., _SCORE].view(torch.float32)], dim=1)
        err = torch.cat([self.cell_err, other_state[..., _ERR].view(torch.float32)], dim=1)
        hot = torch.cat([self.cell_slot, torch.full_like(self.cell_slot, EMPTY)], dim=1)
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
        valid = key.gather(1, keep) > -float("inf")
        new_hot = hot.gather(1, keep)
        # hot cells that lost their place give their slot back
        lost = (self.cell_slot >= 0) & ~torch.isin(self.cell_slot, new_hot[new_hot >= 0])
        if lost.any():
            self._release(self.cell_slot[lost])
        self.cell_id.copy_(torch.where(valid, ids.gather(1, keep), torch.full_like(keep, EMPTY, dtype=torch.int32)))
        self.cell_score.copy_(torch.where(valid, score.gather(1, keep), torch.zeros_like(self.cell_score)))
        self.cell_err.copy_(torch.where(valid, err.gather(1, keep), torch.zeros_like(self.cell_err)))
        self.cell_slot.copy_(torch.where(valid, new_hot, torch.full_like(new_hot, EMPTY)))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.state.clone(), "free_slots": self.free_slots.clone(),
                "free_top": self.free_top.clone(), "rng": torch.from_numpy(self.rng.view(np.int64).copy()),
                "gen": self.gen.get_state(),
                "meta": torch.tensor([self.w, self.c, self.num_hot_slots, self.total_promotions,
                                      self.total_demotions], dtype=torch.int64),
                "threshold": torch.tensor(self.threshold)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        w, c, slots, promos, demos = (int(v) for v in state["meta"])
        if (w, c, slots) != (self.w, self.c, self.num_hot_slots):
            raise ValueError(f"sketch shape {(w, c, slots)} does not match {(self.w, self.c, self.num_hot_slots)}")
        self.state = state["state"].to(self.device).clone()
        self.free_slots = state["free_slots"].to(self.device).clone()
        self.free_top = state["free_top"].clone()
        self.rng = state["rng"].numpy().view(np.uint64).copy()
        self.gen.set_state(state["gen"])
        self.threshold = float(state["threshold"])
        self.total_promotions, self.total_demotions = promos, demos
