"""HotSketch: bucketed Space-Saving that scores ids by importance; it hands out nothing.

A worker keeps one to score the ids of its own batches; the coordinator's merger
(:class:`cafe_dist.embeddings.cafe.coordinator.HotSetMerger`) alone decides which ids are hot and which rows they
get, from the sketches' summaries (:meth:`HotSketch.candidates`).

State is ``w`` buckets × ``c`` cells (default 4); each cell holds (id, score, error) in 12 bytes,
plus one bit: pinned.
- A known id adds its importance to its cell's score.
- A newcomer takes an empty cell, or else replaces the bucket's lowest-scoring *unpinned* cell and
  inherits its score; the inherited amount is kept as the cell's ``error`` (Space-Saving's per-cell
  error term). :meth:`pin` protects cells (the ids the global hot set holds) from eviction.
- ``admission="randomized"`` (default) admits a newcomer to a full bucket only with probability
  w / (min score + w) (RAP, Ben Basat et al., INFOCOM 2017): the long tail of one-off ids no longer
  churns the weakest cells upward, which is what lets mid-heavy ids survive at 4 cells per hot id
  (recall of the true top 1 % at a sketch of 4x the hot set: ~0.96 against ~0.6 for
  ``admission="always"``, plain Space-Saving). Expected scores stay unbiased.
- ``decay(factor)`` scales scores and errors.

Layout: one int32 array (w, c, 3) with fields id, score (float32 bits), error (float32 bits) (a
4-cell bucket is 48 bytes: an insert touches one or two cache lines), and a bit array of pinned
cells. Ids must fit in 31 bits (global keys of a CriteoTB-sized vocabulary do).

Two insert paths over the same array: an exact sequential kernel compiled with numba (CPU), and a
batched tensor path (GPU workers), where newcomers of one batch compete for a bucket's cells by
weight.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

EMPTY = -1
MAX_ID = 2**31 - 2
CELL_BYTES = 12  # id, score, error (+ 1 bit: pinned)
_ID, _SCORE, _ERR = 0, 1, 2
_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
_NO_WEIGHTS = np.zeros(1, np.float32)


@numba.njit(cache=True, boundscheck=False, nogil=True)  # nogil: it runs beside the step (scoring.py)
def _insert_kernel(ids, weights, unit, st, sf, pins, randomized, rng):
    """Sequential Space-Saving over ``ids``. ``st`` is the state flattened to int32 (12 words per
    4-cell bucket), ``sf`` the same memory as float32, ``pins`` one bit per cell. The 4-cell probe
    is unrolled (~1.5x faster than a generic cell loop). With ``randomized`` a newcomer takes a full
    bucket's weakest cell only with probability s / (score + s) (xorshift64 state in ``rng``, so
    equal streams give equal sketches)."""
    w = st.shape[0] // 12
    r = rng[0]
    for i in range(ids.shape[0]):
        x = np.int32(ids[i])
        s = np.float32(1.0) if unit else weights[i]
        h = np.uint64(ids[i]) * np.uint64(0x9E3779B97F4A7C15)
        b = np.int64(((h >> np.uint64(32)) * np.uint64(w)) >> np.uint64(32))
        base = b * 12
        if st[base] == x:
            sf[base + 1] += s
            continue
        if st[base + 3] == x:
            sf[base + 4] += s
            continue
        if st[base + 6] == x:
            sf[base + 7] += s
            continue
        if st[base + 9] == x:
            sf[base + 10] += s
            continue
        # first empty cell, else the weakest unpinned cell; all pinned: the id stays out
        victim = -1
        vscore = np.float32(np.inf)
        pinned = pins[b >> 1] >> ((b & 1) * 4)  # 4 cells: half a byte per bucket
        for j in range(4):
            c = base + 3 * j
            if st[c] == -1:
                victim = c
                vscore = np.float32(-1.0)
                break
            if (pinned >> j) & 1 == 0 and sf[c + 1] < vscore:
                vscore = sf[c + 1]
                victim = c
        if victim < 0:
            continue
        if randomized and vscore >= 0:
            r ^= r << np.uint64(13)
            r ^= r >> np.uint64(7)
            r ^= r << np.uint64(17)
            if np.float32((r >> np.uint64(40)) * (1.0 / 16777216.0)) * (vscore + s) >= s:
                continue  # not admitted: the id stays out, the bucket is unchanged
        st[victim] = x
        if vscore < 0:
            sf[victim + 1] = s
            sf[victim + 2] = 0.0
        else:
            sf[victim + 2] = vscore
            sf[victim + 1] = vscore + s
    rng[0] = r


class HotSketch:
    """Bucketed Space-Saving scores. Tensors live on ``device``; numba runs on CPU tensors."""

    def __init__(self, num_buckets: int, cells: int = 4, device: torch.device | str = "cpu",
                 use_numba: bool | None = None, admission: str = "randomized", seed: int = 0) -> None:
        if num_buckets <= 0 or cells <= 0:
            raise ValueError("num_buckets and cells must be positive")
        if use_numba and cells != 4:
            raise ValueError("the numba kernel is specialised for 4 cells per bucket")
        if admission not in ("randomized", "always"):
            raise ValueError(f"admission must be 'randomized' or 'always', got {admission!r}")
        self.w, self.c = num_buckets, cells
        self.randomized = admission == "randomized"
        # xorshift64 state for admission draws (numba path); a torch generator for the tensor path
        self.rng = np.array([(0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) % 2**64 or 1], dtype=np.uint64)
        self.gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
        self.device = torch.device(device)
        self.use_numba = (self.device.type == "cpu" and cells == 4) if use_numba is None else use_numba
        self.state = torch.zeros((num_buckets, cells, 3), dtype=torch.int32, device=self.device)
        self.state[..., _ID] = EMPTY
        self.pins = torch.zeros((num_buckets * cells + 7) // 8, dtype=torch.uint8, device=self.device)

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
    def cell_pinned(self) -> torch.Tensor:
        """(w, c) bool, unpacked from the bit array (a copy: change it through :meth:`pin`)."""
        shifts = torch.arange(8, dtype=torch.uint8, device=self.pins.device)
        bits = (self.pins.unsqueeze(1) >> shifts) & 1
        return bits.reshape(-1)[: self.w * self.c].view(self.w, self.c).bool()

    def to(self, device: torch.device | str) -> HotSketch:
        device = torch.device(device)
        self.state, self.pins = self.state.to(device), self.pins.to(device)
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

    def scores(self, ids: torch.Tensor) -> torch.Tensor:
        """Score of each id (0 when the sketch does not hold it)."""
        b, j = self._find(ids)
        return torch.where(j >= 0, self.cell_score[b, j.clamp(min=0)], torch.zeros_like(b, dtype=torch.float32))

    def candidates(self, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of every occupied cell scoring at least ``min_score``: the summary a
        worker sends to the coordinator."""
        score = self.cell_score
        keep = (self.cell_id != EMPTY) & (score >= min_score)
        return (self.cell_id[keep].to(torch.int64).cpu().numpy(), score[keep].cpu().numpy())

    def _best(self, value: torch.Tensor, k: int) -> torch.Tensor:
        """Flat cell indices of the (at most) ``k`` occupied cells with the highest ``value``."""
        held = (self.cell_id.reshape(-1) != EMPTY).nonzero().squeeze(1)
        return held[torch.topk(value.reshape(-1)[held], min(k, held.numel())).indices]

    def lower_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, lower bounds) of the occupied cells: each id's score minus its inherited error, i.e.
        the mass the id itself is known to have brought (Space-Saving's lower bound)."""
        held = (self.cell_id.reshape(-1) != EMPTY).nonzero().squeeze(1)
        return self.cell_id.reshape(-1)[held], (self.cell_score - self.cell_err).reshape(-1)[held]

    def top(self, k: int) -> torch.Tensor:
        """The (at most) ``k`` ids with the highest scores."""
        return self.cell_id.reshape(-1)[self._best(self.cell_score, k)].to(torch.int64)

    def memory_bytes(self) -> int:
        return self.w * self.c * CELL_BYTES + self.pins.numel()

    # ---- updates ---------------------------------------------------------------------------
    def insert(self, ids: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add a batch of ids with importance ``weights`` (default 1 each: frequency)."""
        ids = ids.reshape(-1)
        if ids.numel() == 0:
            return
        if self.use_numba:
            w = _NO_WEIGHTS if weights is None else weights.reshape(-1).to(torch.float32).cpu().numpy()
            st, pins = self._flat()
            _insert_kernel(ids.cpu().numpy(), w, weights is None, st, st.view(np.float32), pins, self.randomized,
                           self.rng)
            return
        if weights is None:
            weights = torch.ones(ids.shape, dtype=torch.float32, device=ids.device)
        self._insert_tensor(ids.to(self.device, torch.int64), weights.reshape(-1).to(self.device, torch.float32))

    def _flat(self) -> tuple[np.ndarray, np.ndarray]:
        """numpy views sharing memory with the state and pin bits (re-made when tensors are replaced)."""
        key = (self.state.data_ptr(), self.pins.data_ptr())
        if getattr(self, "_flat_key", None) != key:
            self._flat_np = (self.state.numpy().reshape(-1), self.pins.numpy())
            self._flat_key = key
        return self._flat_np

    def pin(self, ids: torch.Tensor, pinned: bool = True) -> None:
        """Protect (or release) the cells of ``ids`` from eviction by newcomers; ids the sketch
        does not hold are ignored."""
        b, j = self._find(ids.to(self.device, torch.int64))
        held = j >= 0
        idx = torch.unique(b[held] * self.c + j[held])
        byte, bit = idx >> 3, (idx & 7).to(torch.uint8)
        mask = torch.zeros_like(self.pins).index_put_((byte,), torch.ones_like(bit) << bit, accumulate=True)
        if pinned:
            self.pins |= mask
        else:
            self.pins &= ~mask

    def unpin_all(self) -> None:
        self.pins.zero_()

    def _insert_tensor(self, ids: torch.Tensor, weights: torch.Tensor) -> None:
        uid, inv = torch.unique(ids, return_inverse=True)
        uw = torch.zeros(uid.shape, dtype=torch.float32, device=ids.device).index_add_(0, inv, weights)
        b, j = self._find(uid)
        known = j >= 0
        score = self.cell_score
        score.index_put_((b[known], j[known]), uw[known], accumulate=True)
        # Newcomers compete per bucket, heaviest first: the heaviest replaces the bucket's weakest
        # unpinned cell (as sequential Space-Saving would), later ones only take empty cells. The
        # mass of the rest is what sequential Space-Saving would have churned through that weakest
        # cell, so it is added to the cell as inherited error.
        nb, nw, nid = b[~known], uw[~known], uid[~known]
        if nid.numel() == 0:
            return
        pinned = self.cell_pinned != 0
        order = torch.argsort(nw, descending=True, stable=True)
        order = order[torch.argsort(nb[order], stable=True)]
        nb, nw, nid = nb[order], nw[order], nid[order]
        rank = torch.arange(nb.numel(), device=nb.device) - torch.searchsorted(nb, nb)
        empty = self.cell_id[nb] == EMPTY
        key = torch.where(empty, torch.full_like(score[nb], -1.0), score[nb])
        key = torch.where(pinned[nb], torch.full_like(key, float("inf")), key)
        cand = torch.argsort(key, dim=1)
        cell = cand.gather(1, rank.clamp(max=self.c - 1).unsqueeze(1)).squeeze(1)
        into_empty = empty.gather(1, cell.unsqueeze(1)).squeeze(1)
        takes = (rank < self.c) & ~pinned[nb, cell] & ((rank == 0) | into_empty)
        if self.randomized:  # RAP: replacing a live cell needs a won draw, the rest are dropped
            u = torch.rand(nw.shape, generator=self.gen, device=nw.device)
            takes = takes & (into_empty | (u * (score[nb, cell] + nw) < nw))
            churn = torch.zeros_like(takes)
        else:
            churn = ~takes & ~pinned[nb, cand[:, 0]]
        churn_w = torch.zeros(self.w, dtype=torch.float32, device=nb.device).index_add_(0, nb[churn], nw[churn])
        nb, nw, nid, cell = nb[takes], nw[takes], nid[takes], cell[takes]
        inherited = torch.where(self.cell_id[nb, cell] == EMPTY, torch.zeros_like(nw), score[nb, cell])
        self.cell_id[nb, cell] = nid.to(torch.int32)
        self.cell_err[nb, cell] = inherited
        score[nb, cell] = inherited + nw
        # churned mass lands on the bucket's weakest unpinned cell, as inherited error
        hit = churn_w > 0
        if hit.any():
            hb = hit.nonzero().squeeze(1)
            hkey = torch.where(pinned[hb], torch.full_like(score[hb], float("inf")), score[hb])
            hc = hkey.argmin(dim=1)
            score[hb, hc] += churn_w[hb]
            self.cell_err[hb, hc] += churn_w[hb]

    def decay(self, factor: float) -> None:
        """Scale every score (and its error) by ``factor``."""
        self.cell_score.mul_(factor)
        self.cell_err.mul_(factor)

    # ---- persistence -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"state": self.state.clone(), "pins": self.pins.clone(),
                "rng": torch.from_numpy(self.rng.view(np.int64).copy()),
                "gen": self.gen.get_state(), "meta": torch.tensor([self.w, self.c], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        w, c = (int(v) for v in state["meta"][:2])
        if (w, c) != (self.w, self.c):
            raise ValueError(f"sketch shape {(w, c)} does not match {(self.w, self.c)}")
        self.state = state["state"][..., :3].to(self.device).clone()  # 4 words a cell before pin bits
        self.pins = state["pins"].to(self.device).clone() if "pins" in state else torch.zeros_like(self.pins)
        self.rng = state["rng"].numpy().view(np.uint64).copy()
        self.gen.set_state(state["gen"])
