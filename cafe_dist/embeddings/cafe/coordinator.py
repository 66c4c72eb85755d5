"""Global hot set for distributed CAFE: per-worker sketch summaries in, one versioned map out.

Every ``cafe.sync_interval`` steps each worker sends the candidate cells of its local HotSketch
(ids with their local scores, only cells scoring at least ``min_score``). :class:`HotSetMerger`
sums the scores per id over all ranks, keeps every hot id whose merged score still passes the
threshold *in its slot* (stable slots), demotes the rest, promotes the strongest new candidates
into the freed and free slots, and, for CAFE-ML, picks the medium set. The result is a
:class:`HotMapUpdate` with a version number that every rank applies at the same step.

Transports: :class:`CoordinatorActor`, a named Ray actor (one per run, namespace ``cafe-dist``)
that merges as soon as the last rank's summary arrives, so workers keep training while it works;
it writes each merged state to ``state_dir`` before any call of that round returns, and Ray
restarts it after a crash (``max_restarts``) and retries the calls in flight. A rank's ``submit``
returns only once its round is merged and saved, so every summary the saved state lacks is still
in flight and reaches the restarted coordinator again: it picks up exactly where the dead one
stopped, with one write per round (not one per rank: at 256 workers those writes were two thirds
of a round's time, BENCHMARKS.md); and :class:`CollectiveSync`, which all-gathers the summaries and runs the same deterministic merge
on every rank (for process groups without Ray, e.g. unit tests).
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cafe_dist.collectives import all_gather_cat, world
from cafe_dist.data import storage
from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate
from cafe_dist.embeddings.cafe.layout import spread_row
from cafe_dist.embeddings.service import RunService

NAMESPACE = "cafe-dist"
# calls the actor holds at once: a submit and a wait per rank and round in flight (256 ranks, a
# few rounds) is far beyond Ray's default of 1000 for async actors
MAX_CALLS = 65_536
# what a resumed run's merger takes from the run rather than from its saved state
ELASTIC_CONFIG = ("world_size", "slot_rows", "slot_stride")


@dataclass(frozen=True)
class MergeConfig:
    num_slots: int
    threshold: float
    world_size: int
    ml_threshold: float | None = None  # CAFE-ML medium level; None for plain CAFE
    max_medium: int = 0
    admission: str = "threshold"  # or "capacity": fill every slot, with hysteresis
    hysteresis: float = 1.0
    # where the slots' rows are (CafeLayout: physical row = slot * slot_stride mod slot_rows), so that
    # newcomers go to the row-wise blocks (world_size of them) with the least hot score; 0: anywhere
    slot_rows: int = 0
    slot_stride: int = 1

    def slot_blocks(self) -> np.ndarray | None:
        """The row-wise block (TorchRec's: ceil(rows / world) rows each) of each slot's row; None:
        one block, or rows unknown."""
        if self.slot_rows <= 0 or self.world_size <= 1:
            return None
        rows = spread_row(np.arange(self.num_slots, dtype=np.int64), self.slot_stride, self.slot_rows)
        return rows // -(-self.slot_rows // self.world_size)


def deal_blocks(load: np.ndarray, strength: np.ndarray, head: int = 16, rounds: int = 64) -> np.ndarray:
    """The block each newcomer (``strength``: scores, strongest first) goes to so that the blocks'
    hot scores (``load``) end up even and each block takes its share of the newcomers (its share of
    the free rows): the first ``head`` per block one by one to the least loaded block (greedy,
    largest first: the few ids that carry most of the traffic), the rest in rounds of one newcomer
    per block, the strongest of a round to the least loaded block, the order of the blocks renewed
    every ``rounds`` rounds (vectorised: a first version promotes every slot at once)."""
    load = load.astype(np.float64).copy()
    n, b = strength.size, load.size
    want = np.empty(n, np.int64)
    i = min(n, head * b)
    for j in range(i):
        want[j] = least = int(np.argmin(load))
        load[least] += strength[j]
    while i < n:
        m = min(n - i, rounds * b)
        want[i:i + m] = np.argsort(load, kind="stable")[np.arange(m) % b]
        load += np.bincount(want[i:i + m], weights=strength[i:i + m], minlength=b)
        i += m
    return want


def spread_over_blocks(free: np.ndarray, blocks: np.ndarray, load: np.ndarray,
                       strength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Free slots for newcomers (``strength``: their scores, strongest first) in the blocks
    :func:`deal_blocks` chose, each block's free slots top of the stack first, and any free slot when
    a block has run out. Returns (the slots, the free stack left)."""
    n, b = strength.size, load.size
    top_first = free[::-1]
    block_of = blocks[top_first]
    grouped = np.argsort(block_of, kind="stable")  # each block's free slots, top of the stack first
    start = np.searchsorted(block_of[grouped], np.arange(b))
    have = np.bincount(block_of, minlength=b)
    want = deal_blocks(load, strength)
    i = np.arange(n)
    by_want = np.argsort(want, kind="stable")
    nth = np.empty(n, np.int64)  # the newcomer's place among those wanting its block
    nth[by_want] = i - np.searchsorted(want[by_want], want[by_want])
    ok = nth < have[want]
    out = np.empty(n, np.int64)
    pick = grouped[start[want[ok]] + nth[ok]]
    out[ok] = top_first[pick]
    taken = np.zeros(free.size, bool)
    taken[pick] = True
    rest = np.flatnonzero(~taken)  # top of the stack first
    out[~ok] = top_first[rest[: int((~ok).sum())]]
    taken[rest[: int((~ok).sum())]] = True
    return out, top_first[~taken][::-1]


class Admission:
    """Which incumbents stay and which newcomers are promoted in a round (the hot set's rule)."""

    def decide(self, merged: np.ndarray, newcomer: np.ndarray,
               score_of_hot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``merged``: every candidate's global score; ``newcomer``: which candidates are not hot;
        ``score_of_hot``: each incumbent's score this round. Returns (which incumbents stay, the
        newcomers to promote, strongest first: the merger gives them the free slots in that order)."""
        raise NotImplementedError


@dataclass(frozen=True)
class ThresholdAdmission(Admission):
    """The paper's rule: incumbents stay (same slot) while they pass the threshold; newcomers above
    it enter, strongest first."""

    threshold: float

    def decide(self, merged, newcomer, score_of_hot):
        stay = score_of_hot >= self.threshold
        new_idx = np.nonzero((merged >= self.threshold) & newcomer)[0]
        return stay, new_idx[np.argsort(-merged[new_idx], kind="stable")]


@dataclass(frozen=True)
class CapacityAdmission(Admission):
    num_slots: int
    hysteresis: float

    def decide(self, merged, newcomer, score_of_hot):
        """Fill every slot with the strongest ids, without churning: the bar is the score of the
        weakest id that fits (the num_slots-th best); an incumbent stays while it scores at least
        bar / h; free slots go to the strongest newcomers; then a newcomer displaces the weakest
        remaining incumbent only if it scores more than h times as much."""
        n, h = self.num_slots, self.hysteresis
        every = np.concatenate([score_of_hot, merged[newcomer]])
        bar = float(np.partition(every, every.size - n)[every.size - n]) if every.size >= n else 0.0
        stay = (score_of_hot > 0) & (score_of_hot >= bar / h)
        challengers = np.nonzero(newcomer & (merged > 0))[0]
        challengers = challengers[np.argsort(-merged[challengers], kind="stable")]
        free = n - int(stay.sum())
        fill, rest = challengers[:free], challengers[free:]
        kept = np.nonzero(stay)[0]
        weakest = kept[np.argsort(score_of_hot[kept], kind="stable")][: rest.size]
        beats = merged[rest[: weakest.size]] > h * score_of_hot[weakest]
        m = int(beats.sum())  # challengers descend, incumbents ascend: the wins are a prefix
        stay[weakest[:m]] = False
        return stay, np.concatenate([fill, rest[:m]])


@dataclass(frozen=True)
class MediumBand:
    """CAFE-ML's medium level: at most ``max_medium`` ids below the hot set, strongest first: all
    those scoring above 0 (with capacity admission), or only those in [``low``, ``high``) (the
    paper's band, with threshold admission)."""

    max_medium: int
    low: float | None = None
    high: float | None = None

    def select(self, uniq: np.ndarray, merged: np.ndarray, hot_keys: np.ndarray) -> np.ndarray:
        below = ~np.isin(uniq, hot_keys) & (merged > 0)
        if self.low is not None:
            below &= (merged >= self.low) & (merged < self.high)
        mid = np.nonzero(below)[0]
        return np.sort(uniq[mid[np.argsort(-merged[mid], kind="stable")][: self.max_medium]])


def admission_of(cfg: MergeConfig) -> Admission:
    if cfg.admission == "capacity":
        return CapacityAdmission(cfg.num_slots, cfg.hysteresis)
    return ThresholdAdmission(cfg.threshold)


def medium_band_of(cfg: MergeConfig) -> MediumBand | None:
    """None for plain CAFE (no medium level)."""
    if cfg.ml_threshold is None:
        return None
    if cfg.admission == "capacity":
        return MediumBand(cfg.max_medium)
    return MediumBand(cfg.max_medium, cfg.ml_threshold, cfg.threshold)


class HotSetMerger:
    """Deterministic merge of sketch summaries into hot-set versions (the coordinator's state): the
    scores summed over ranks, then the admission rule (:class:`Admission`) and, for CAFE-ML, the
    medium band (:class:`MediumBand`) decide; the merger hands out the slots."""

    def __init__(self, config: MergeConfig) -> None:
        self.config = config
        self.blocks = config.slot_blocks()
        self.hot_keys = np.zeros(0, np.int64)  # sorted
        self.hot_slots = np.zeros(0, np.int64)
        self.hot_since = np.zeros(0, np.int64)  # the version each hot id entered at (`cafe-dist hot`)
        self.free = np.arange(config.num_slots - 1, -1, -1, dtype=np.int64)  # stack, top at the end
        self.version = 0
        self.pending: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
        self.updates: dict[int, HotMapUpdate] = {}

    def submit(self, round_: int, rank: int, keys: np.ndarray, scores: np.ndarray) -> bool:
        """Add one rank's summary for ``round_``; merges (and returns True) once all ranks are in."""
        if round_ in self.updates:
            return True
        self.pending.setdefault(round_, {})[rank] = (np.asarray(keys, np.int64), np.asarray(scores, np.float32))
        if len(self.pending[round_]) < self.config.world_size:
            return False
        if round_ != self.version:  # rounds merge in order; the actor guarantees it, this checks it
            raise RuntimeError(f"round {round_} complete before round {self.version}")
        parts = self.pending.pop(round_)
        self.updates[round_] = self._merge([parts[r] for r in sorted(parts)])
        for old in [r for r in self.updates if r < round_ - 8]:  # keep a short history
            del self.updates[old]
        return True

    def update(self, round_: int) -> HotMapUpdate | None:
        return self.updates.get(round_)

    def _merge(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> HotMapUpdate:
        t0 = time.perf_counter()
        cfg = self.config
        keys = np.concatenate([k for k, _ in parts]) if parts else np.zeros(0, np.int64)
        scores = np.concatenate([s for _, s in parts]) if parts else np.zeros(0, np.float32)
        uniq, inv = np.unique(keys, return_inverse=True)
        merged = np.bincount(inv, weights=scores, minlength=uniq.size).astype(np.float64)
        score_of_hot = np.zeros(self.hot_keys.size)
        if uniq.size:
            pos = np.minimum(np.searchsorted(uniq, self.hot_keys), uniq.size - 1)
            score_of_hot = np.where(uniq[pos] == self.hot_keys, merged[pos], 0.0)
        newcomer = ~np.isin(uniq, self.hot_keys)
        stay, new_idx = admission_of(cfg).decide(merged, newcomer, score_of_hot)
        demoted_keys, demoted_slots = self.hot_keys[~stay], self.hot_slots[~stay]
        self.free = np.concatenate([self.free, demoted_slots[::-1]])
        kept_keys, kept_slots, kept_since = self.hot_keys[stay], self.hot_slots[stay], self.hot_since[stay]
        cand = new_idx[: self.free.size]
        new_keys = uniq[cand]
        blocks = self.blocks
        if blocks is None:
            new_slots = self.free[::-1][: new_keys.size].copy()
            self.free = self.free[: self.free.size - new_keys.size]
        else:
            load = np.bincount(blocks[kept_slots], weights=score_of_hot[stay], minlength=self.config.world_size)
            new_slots, self.free = spread_over_blocks(self.free, blocks, load, merged[cand])
        keys_all = np.concatenate([kept_keys, new_keys])
        slots_all = np.concatenate([kept_slots, new_slots])
        since_all = np.concatenate([kept_since, np.full(new_keys.size, self.version + 1, np.int64)])
        order = np.argsort(keys_all)
        self.hot_keys, self.hot_slots, self.hot_since = keys_all[order], slots_all[order], since_all[order]
        band = medium_band_of(cfg)
        medium = band.select(uniq, merged, self.hot_keys) if band is not None else np.zeros(0, np.int64)
        self.version += 1
        n_hot = int(self.hot_keys.size)
        stats = {"version": self.version, "hot": n_hot, "promoted": int(new_keys.size),
                 "demoted": int(demoted_keys.size), "medium": int(medium.size),
                 "churn": (new_keys.size + demoted_keys.size) / max(n_hot, 1),
                 "candidates": int(uniq.size), "merge_s": time.perf_counter() - t0, "merged_at": time.time()}
        t = torch.from_numpy
        return HotMapUpdate(self.version, t(new_keys.copy()), t(new_slots.copy()), t(demoted_keys.copy()),
                            t(demoted_slots.copy()), t(medium), stats)

    def state_dict(self) -> dict[str, Any]:
        """Everything but partial rounds; ``updates`` keeps the recent versions ranks may still fetch."""
        return {"config": self.config.__dict__, "hot_keys": self.hot_keys.copy(), "hot_slots": self.hot_slots.copy(),
                "hot_since": self.hot_since.copy(), "free": self.free.copy(), "version": self.version, "updates": dict(self.updates)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.config = MergeConfig(**state["config"])
        self.blocks = self.config.slot_blocks()
        self.hot_keys, self.hot_slots = state["hot_keys"].copy(), state["hot_slots"].copy()
        self.hot_since = state.get("hot_since", np.zeros(self.hot_keys.size, np.int64)).copy()  # older states: unknown
        self.free, self.version = state["free"].copy(), int(state["version"])
        self.pending, self.updates = {}, dict(state.get("updates", {}))


class _StateStore:
    """The coordinator's durable state under one directory (local path or URI): ``merged-v<V>.pt``
    after each merge (older ones deleted)."""

    _MERGED = re.compile(r"^merged-v(\d+)\.pt$")

    def __init__(self, directory: str) -> None:
        self.dir = directory

    def clear(self) -> None:
        storage.delete(self.dir)

    def save_merged(self, state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        version = int(state["version"])
        storage.write_bytes(storage.join(self.dir, f"merged-v{version:08d}.pt"), buf.getvalue())
        for name in storage.list_dir(self.dir):
            m = self._MERGED.match(name)
            if m and int(m.group(1)) < version:
                storage.delete(storage.join(self.dir, name))

    def load(self) -> dict[str, Any] | None:
        """The newest readable merged state."""
        for name in sorted((n for n in storage.list_dir(self.dir) if self._MERGED.match(n)), reverse=True):
            try:
                return torch.load(io.BytesIO(storage.read_bytes(storage.join(self.dir, name))), weights_only=False)
            except Exception:  # noqa: BLE001 (a write cut short by the crash: use the one before)
                continue
        return None


class CoordinatorActor:
    """Ray actor around :class:`HotSetMerger` (async: ``submit`` and ``wait`` block only their caller).

    With ``state_dir`` every merged state is saved before the round's calls return, and a restarted
    actor (after a crash; Ray restarts it) reloads the newest; the summaries of later rounds arrive
    again, as the calls Ray retries."""

    def __init__(self, merge_delay_s: float = 0.0, state_dir: str | None = None) -> None:
        self.merger: HotSetMerger | None = None
        self.events: dict[int, asyncio.Event] = {}
        self.merge_delay_s = merge_delay_s  # simulated merge latency (tests, what-if measurements)
        self.store = _StateStore(state_dir) if state_dir else None
        self.restarted = False
        if self.store is not None:
            import ray

            if ray.get_runtime_context().was_current_actor_reconstructed:
                self.restarted = True
                self._recover()

    def _recover(self) -> None:
        state = self.store.load()
        if state is not None:
            self._load(state)

    def _load(self, state: dict[str, Any]) -> None:
        self.merger = HotSetMerger(MergeConfig(**state["config"]))
        self.merger.load_state_dict(state)
        self.events = {}
        for round_ in self.merger.updates:
            self._event(round_).set()

    def _merged(self, round_: int) -> None:
        t0 = time.perf_counter()
        if self.store is not None:
            self.store.save_merged(self.merger.state_dict())
        stats = self.merger.update(round_).stats
        stats["store_s"] = time.perf_counter() - t0
        stats["ready_at"] = time.time()
        self._event(round_).set()

    async def configure(self, config: MergeConfig) -> None:
        if self.merger is None:
            self.merger = HotSetMerger(config)
        elif self.merger.config != config:
            raise ValueError(f"coordinator already configured with {self.merger.config}, got {config}")

    async def reset(self, state: dict[str, Any] | None) -> None:
        """Start a run (``None``) or resume one from a checkpointed state: whatever this actor or its
        state directory held before is dropped."""
        self.merger, self.events = None, {}
        if self.store is not None:
            self.store.clear()
        if state:
            self._load(state)
            if self.store is not None:
                self.store.save_merged(self.merger.state_dict())

    def _event(self, round_: int) -> asyncio.Event:
        return self.events.setdefault(round_, asyncio.Event())

    async def submit(self, round_: int, rank: int, keys: np.ndarray, scores: np.ndarray) -> None:
        """Returns once ``round_`` is merged (and saved): until then Ray retries it after a crash."""
        assert self.merger is not None, "configure() first"
        while round_ > self.merger.version and round_ - 1 not in self.merger.updates:
            await self._event(round_ - 1).wait()  # merges happen in round order
        if round_ < self.merger.version and round_ in self.merger.updates:
            return  # a retried call whose round was merged before a restart
        if self.merger.submit(round_, rank, keys, scores) and not self._event(round_).is_set():
            if self.merge_delay_s:
                await asyncio.sleep(self.merge_delay_s)
            self._merged(round_)
        await self._event(round_).wait()

    async def wait(self, round_: int) -> HotMapUpdate:
        await self._event(round_).wait()
        self.events.pop(round_ - 8, None)
        return self.merger.update(round_)

    async def state_dict(self, drain: list[int] | None = None) -> dict[str, Any]:
        """The merged state once every round in ``drain`` (rounds all ranks have sent) is merged:
        with nothing in flight, it is the state a checkpoint must hold."""
        for round_ in drain or []:
            await self._event(round_).wait()
        return self.merger.state_dict() if self.merger else {}

    async def was_restarted(self) -> bool:
        return self.restarted


def actor_name(run_name: str) -> str:
    return f"coordinator-{run_name}"


def start_coordinator(run_name: str, merge_delay_s: float = 0.0, state_dir: str | None = None):
    """Create the run's named coordinator actor (driver side); returns its handle. With
    ``state_dir`` it survives crashes: Ray restarts it and retries the calls in flight."""
    import ray

    cls = ray.remote(num_cpus=0, max_restarts=-1 if state_dir else 0, max_task_retries=-1 if state_dir else 0,
                     max_concurrency=MAX_CALLS)(CoordinatorActor)
    return cls.options(name=actor_name(run_name), namespace=NAMESPACE, get_if_exists=True).remote(
        merge_delay_s, state_dir)


class ActorSync:
    """Worker side of the Ray actor transport: send without waiting, receive when due."""

    def __init__(self, run_name: str, config: MergeConfig) -> None:
        import ray

        self._ray = ray
        self.actor = ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
        ray.get(self.actor.configure.remote(config))
        self._refs: list[Any] = []
        self._waits: dict[int, Any] = {}

    def send(self, round_: int, rank: int, keys: np.ndarray, scores: np.ndarray) -> None:
        self._refs.append(self.actor.submit.remote(round_, rank, keys, scores))
        self._refs = [r for r in self._refs if not self._ray.wait([r], timeout=0)[0]]  # drop finished
        # ask for the version now (the actor is async: the call waits there, not here), so that when
        # it is due, ``receive`` finds it already delivered instead of paying a round trip
        self._waits[round_] = self.actor.wait.remote(round_)

    def receive(self, round_: int) -> HotMapUpdate:
        ref = self._waits.pop(round_, None)
        return self._ray.get(ref if ref is not None else self.actor.wait.remote(round_))


class CollectiveSync:
    """All-gather the summaries and merge identically on every rank (no Ray needed)."""

    def __init__(self, config: MergeConfig) -> None:
        self.merger = HotSetMerger(config)
        self._sent: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def send(self, round_: int, rank: int, keys: np.ndarray, scores: np.ndarray) -> None:
        self._sent[round_] = (keys, scores)

    def receive(self, round_: int) -> HotMapUpdate:
        keys, scores = self._sent.pop(round_)
        rank, n = world()
        score_bits = torch.from_numpy(scores.astype(np.float32)).view(torch.int32).to(torch.int64)
        mine = torch.stack([torch.from_numpy(keys), torch.full((keys.size,), rank, dtype=torch.int64), score_bits])
        every = all_gather_cat(mine.t().contiguous())  # (key, rank, score bits) rows, in rank order
        for r in range(n):
            mine = every[every[:, 1] == r]
            s = mine[:, 2].to(torch.int32).view(torch.float32).numpy()
            self.merger.submit(round_, r, mine[:, 0].numpy(), s)
        return self.merger.update(round_)


class CoordinatorService(RunService):
    """CAFE's run service: the named :class:`CoordinatorActor` (rank 0 speaks for it in checkpoints)."""

    def __init__(self, run_name: str, rank: int, world_size: int) -> None:
        import ray

        self.run_name, self.rank, self.world_size = run_name, rank, world_size
        self.actor = ray.get_actor(actor_name(run_name), namespace=NAMESPACE)
        self.state: dict[str, Any] | None = None

    @classmethod
    def start(cls, run_name: str, state_dir: str) -> Any:
        return start_coordinator(run_name, state_dir=state_dir)

    @classmethod
    def stop(cls, handle: Any) -> None:
        import ray

        ray.kill(handle)

    @classmethod
    def attach(cls, run_name: str, rank: int, world_size: int) -> CoordinatorService:
        return cls(run_name, rank, world_size)

    def snapshot(self, emb: Any) -> dict[str, Any] | None:
        import ray

        return ray.get(self.actor.state_dict.remote(emb.rounds_in_flight())) if self.rank == 0 else None

    def restore(self, state: dict[str, Any] | None) -> None:
        self.state = state

    def join(self, emb: Any) -> None:
        import ray

        from cafe_dist.collectives import barrier

        state = self.state
        if state:  # elastic: resumed on another count (and states from before the slots' rows were known)
            now = emb.coordinator_config(self.world_size).__dict__
            state = {**state, "config": {**state["config"], **{k: now[k] for k in ELASTIC_CONFIG}}}
        if self.rank == 0:
            ray.get(self.actor.reset.remote(state))
        barrier()
        emb.connect(self.run_name, self.world_size)

    def restarted(self) -> bool:
        import ray

        return bool(ray.get(self.actor.was_restarted.remote()))

    def kill(self) -> None:
        import ray

        ray.kill(self.actor, no_restart=False)
