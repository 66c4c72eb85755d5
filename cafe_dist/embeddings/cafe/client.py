"""This rank's side of the hot-set exchange: rounds, lag and the transport.

Every ``sync_interval`` steps the rank sends its sketch summary for round r; version r + 1 of the
global hot set is applied ``sync_lag`` steps later, at the same step on every rank, so the
exchange overlaps training. The transport is an :class:`ActorSync` (the run's coordinator actor)
or a :class:`CollectiveSync` (all-gather, for process groups without Ray).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import astuple, dataclass

import numpy as np

from cafe_dist.embeddings.cafe.coordinator import ActorSync, CollectiveSync, MergeConfig
from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate


@dataclass(frozen=True)
class _Round:
    round: int
    apply_at: int  # step after which its version is applied
    sent_at: float  # wall clock
    bytes_sent: float


class HotSetClient:
    def __init__(self, sync_interval: int, sync_lag: int) -> None:
        self.interval, self.lag = sync_interval, sync_lag
        self.transport: ActorSync | CollectiveSync | None = None
        self._due: deque[_Round] = deque()
        self._step_ends: deque[float] = deque(maxlen=256)
        self.log: list[dict[str, float]] = []

    def connect(self, transport: ActorSync | CollectiveSync) -> None:
        self.transport = transport

    def step(self, step: int, rank: int, merge: MergeConfig,
             summary: Callable[[], tuple[np.ndarray, np.ndarray]],
             apply: Callable[[HotMapUpdate], None]) -> tuple[dict[str, float], float]:
        """After training step ``step`` (1-based): send this rank's ``summary()`` when a round is
        due, then ``apply`` every version whose lag has passed. Returns the last version's stats
        and the seconds spent in ``apply``."""
        if self.transport is None:
            self.transport = CollectiveSync(merge)
        if step % self.interval == 0:
            round_ = step // self.interval - 1
            keys, scores = summary()
            self.transport.send(round_, rank, keys, scores)
            self._due.append(_Round(round_, step + self.lag, time.time(), float(keys.nbytes + scores.nbytes)))
        stats: dict[str, float] = {}
        applying = 0.0
        while self._due and self._due[0].apply_at <= step:
            due = self._due.popleft()
            t_wait = time.perf_counter()
            update = self.transport.receive(due.round)
            waited = time.perf_counter() - t_wait
            apply(update)
            applying += time.perf_counter() - t_wait - waited
            ready = update.stats.get("ready_at", update.stats.get("merged_at", due.sent_at))
            in_flight = sum(1 for t in self._step_ends if due.sent_at < t < ready)
            self.log.append({**update.stats, "wait_s": waited, "steps_in_flight": in_flight,
                             "bytes_sent": due.bytes_sent})
            stats = {k: update.stats[k] for k in ("promoted", "demoted", "churn")}
        self._step_ends.append(time.time())
        return stats, applying

    def rounds_in_flight(self) -> list[int]:
        """Rounds whose summaries were sent but whose version is not applied yet."""
        return [due.round for due in self._due]

    def summary(self) -> dict[str, float]:
        """What the exchange cost, over the run so far."""
        log = self.log
        return {
            "hot_syncs": float(len(log)),
            "sync_wait_s": float(sum(e["wait_s"] for e in log)),
            "sync_merge_s": float(sum(e.get("merge_s", 0.0) for e in log)),
            "sync_bytes_sent": float(sum(e.get("bytes_sent", 0.0) for e in log)),
            "sync_mean_churn": float(sum(e.get("churn", 0.0) for e in log) / max(len(log), 1)),
            "sync_steps_in_flight": float(sum(e.get("steps_in_flight", 0) for e in log)),
        }

    def state_dict(self) -> dict:
        return {"due": [astuple(d) for d in self._due], "sync_log": list(self.log)}

    def load_state_dict(self, state: dict) -> None:
        self._due = deque(_Round(*d) for d in state["due"])
        self.log = list(state["sync_log"])
