"""This rank's importance scores: captured in backward, fed to the local sketch between steps.

Importance of an occurrence is the L2 norm of the gradient reaching its pooled embedding, caught
by a backward hook (so fused tables never need ``.grad``), or 1 per occurrence (``importance:
freq``); only occurrences that were actually trained on count. Gradients are normalised to mean 1
per field (the artifact's rule: a field with large gradients does not crowd out the others) or
over the whole batch. Scores then decay: by half every ``half_life_samples`` samples (global, so
the hot set does not depend on batch size or worker count), or by a factor per step or per mass
of inserted importance. The sketch only scores; which ids are hot is the coordinator's decision.

Off the step's critical path: the sketch's work for step t (its decay and inserts, tens of
milliseconds at batch 65,536) runs in a background thread while step t+1 runs (the numba kernel
holds no GIL); whatever reads the sketch (a summary for the coordinator, pinning the hot ids, a
checkpoint) waits for it first. Only one step's work is in flight, in order, so the sketch holds
exactly what a synchronous insert would have left; the hot set is one round late by design anyway.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from cafe_dist.embeddings.cafe.sketch import HotSketch
from cafe_dist.embeddings.hashing import hash_mod

PART_SEED = 1 << 21  # hash seed of the parts ranks report (apart from every table's seeds)


def part_of(keys: torch.Tensor, parts: int) -> torch.Tensor:
    """Which of ``parts`` disjoint parts of the key space each key falls in: rank r reports part r."""
    return hash_mod(keys, parts, seed=PART_SEED)

def rank_report(ids: torch.Tensor, scores: torch.Tensor, k: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """What rank ``rank`` of ``world`` sends the coordinator in a capacity round: the (at most) ``k``
    ids of its own part of the id space (:func:`part_of`) with the highest positive ``scores``,
    strongest first, each score times ``world`` (a rank sees 1/world of every id's traffic, so that
    estimates the id's global score). The workers report through this, and so do the simulated
    ranks of ``cafe-dist bench coordinator``."""
    if world > 1:
        scores = torch.where(part_of(ids, world) == rank, scores, torch.zeros_like(scores))
    best = torch.topk(scores, min(k, scores.numel())).indices
    keep = best[scores[best] > 0]
    return ids[keep].to(torch.int64).cpu().numpy(), scores[keep].cpu().numpy() * world


def occurrence_norms(grad: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """The L2 norm of the gradient ``grad`` (B, F, D) of each occurrence's bag (``segment`` = f * B + b):
    an occurrence's raw importance."""
    b, nf = grad.shape[0], grad.shape[1]
    return grad.detach().float().norm(dim=2).t().reshape(nf * b).index_select(0, segment)  # bags in (f, b) order


SKETCH_CELLS = 4  # cells per sketch bucket

Decay = tuple[str, float, float | None] | None  # ("step", factor, None) | ("mass", factor, mass) | None: half-life


class ImportanceScorer:
    def __init__(self, num_buckets: int, importance: str, normalise: str, decay: Decay) -> None:
        self._sketch = HotSketch(num_buckets, cells=SKETCH_CELLS)
        self._worker: ThreadPoolExecutor | None = None
        self._inflight: Future | None = None
        self.by_grad = importance == "grad"
        self.per_field = normalise == "field"
        self.decay = decay
        self.half_life_samples: float | None = None  # set from the data (bind_data) when decay is None
        self._pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self._samples = 0
        self._mass = 0.0

    @property
    def sketch(self) -> HotSketch:
        """The sketch, once the work in flight is done (every reader goes through here)."""
        self.wait()
        return self._sketch

    def wait(self) -> None:
        """Finish the sketch work in flight (and raise what it raised)."""
        if self._inflight is not None:
            done, self._inflight = self._inflight, None
            done.result()

    def _submit(self, work) -> None:
        """Run ``work`` (the sketch's part of a step) beside the next step, after the one before."""
        self.wait()
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cafe-sketch")
        self._inflight = self._worker.submit(work)

    def to(self, device: torch.device) -> None:
        if self.sketch.device != device:
            self.sketch.to(device)

    def capture(self, out: torch.Tensor, keys: torch.Tensor, fields: torch.Tensor, segment: torch.Tensor,
                batch_size: int) -> None:
        """Score ``keys`` (one per occurrence, of field ``fields``, pooled into bag ``segment`` =
        f * B + b) by the gradient that reaches ``out`` (B, F, D) in backward."""
        self._samples += batch_size

        def record(grad: torch.Tensor) -> None:
            if self.by_grad:
                self._pending.append((keys, fields, occurrence_norms(grad, segment)))
            else:
                self._pending.append((keys, fields, None))

        out.register_hook(record)

    def normalised(self, fields: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``weights`` scaled to mean 1 per field (``normalise: field``) or over all of them."""
        if not self.per_field:
            mean = weights.mean()
            return weights / mean if mean > 0 else torch.ones_like(weights)
        n = int(fields.max()) + 1
        sums = torch.zeros(n, dtype=weights.dtype, device=weights.device).index_add_(0, fields, weights)
        counts = torch.bincount(fields, minlength=n).to(weights.dtype)
        mean = (sums / counts.clamp(min=1)).index_select(0, fields)
        return torch.where(mean > 0, weights / mean.clamp(min=1e-30), torch.ones_like(weights))

    def flush(self, world_size: int) -> None:
        """Insert what backward captured since the last call, then decay."""
        pending, self._pending = self._pending, []
        samples, self._samples = self._samples, 0
        if not pending:
            return
        keys = torch.cat([k for k, _, _ in pending])
        weights = None
        if pending[0][2] is not None:
            weights = self.normalised(torch.cat([f for _, f, _ in pending]), torch.cat([w for _, _, w in pending]))
        decays: list[float] = []  # applied before the insert (half-life) or after it
        if self.decay is None:  # half-life: age what is there by these samples, count the new at half
            if self.half_life_samples:  # their age (the batch's mid-point), whatever the batch size
                factor = 0.5 ** (samples * world_size / self.half_life_samples)
                weights = (torch.ones(keys.shape) if weights is None else weights) * factor ** 0.5
                self._submit(lambda: self._apply([factor], keys, weights, []))
                return
        else:
            kind, factor, mass = self.decay
            if kind == "step":
                decays = [factor]
            else:
                self._mass += float(keys.numel())  # weights average 1: the mass is the number of occurrences
                share = mass / world_size  # one decay per ``mass`` of global importance; this rank sees 1/world
                while self._mass >= share:
                    self._mass -= share
                    decays.append(factor)
        self._submit(lambda: self._apply([], keys, weights, decays))

    def _apply(self, before: list[float], keys: torch.Tensor, weights: torch.Tensor | None,
               after: list[float]) -> None:
        """One step's sketch work, in the background thread."""
        sketch = self._sketch
        for f in before:
            sketch.decay(f)
        sketch.insert(keys.to(sketch.device), None if weights is None else weights.to(sketch.device))
        for f in after:
            sketch.decay(f)

    def candidates(self, min_score: float) -> tuple[np.ndarray, np.ndarray]:
        return self.sketch.candidates(min_score)

    def top(self, n: int, rank: int = 0, world_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """What this rank reports in a capacity round: :func:`rank_report` of the sketch's ids by
        their own (error-corrected) scores."""
        return rank_report(*self.sketch.lower_bounds(), n, rank, world_size)

    def protect(self, hot_keys: torch.Tensor) -> None:
        """Pin the cells of the ids the global hot set holds (and only those)."""
        self.sketch.unpin_all()
        if hot_keys.numel():
            self.sketch.pin(hot_keys)

    def state_dict(self) -> dict:
        return {"sketch": self.sketch.state_dict(), "mass": self._mass}

    def load_state_dict(self, state: dict) -> None:
        self.sketch.load_state_dict(state["sketch"])
        self._mass = state["mass"]
