"""When a hot-set version reaches the rows and the map, so that a batch remapped ahead of time
(TorchRec's train pipeline remaps batch t+1 before step t's between-steps work) is mapped exactly
as the plain loop maps it.

A version learned in step t's between-steps work (its ``sync_lag`` passed) is applied in two parts
one step apart: the rows of its promoted ids are initialised in step t+1's between-steps work, and
its map maps batches from t+2 on. Batch t+1, which a pipeline has already remapped with the old
map, thus trains on the old rows; batch t+2 finds the new rows in place. The map switch is made by
whichever comes first: the remap of batch t+2 (by its number: ``before_remap``) or step t+1's
between-steps work, so the map after step t's work is the same in both loops (what evaluations,
checksums and checkpoints see), and a checkpoint resumes the same in either.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, fields

import torch

from cafe_dist.embeddings.cafe.hotmap import HotMapUpdate


@dataclass(frozen=True)
class Learned:
    """A version as learned: what it changes, and when."""

    update: HotMapUpdate
    step: int  # learned in this step's between-steps work: rows at step + 1, map from batch step + 2
    was_medium: torch.Tensor | None  # cafe_ml: which promoted ids were medium before it (they read two rows)

    @property
    def migrate_at(self) -> int:
        return self.step + 1

    @property
    def maps_from(self) -> int:
        return self.step + 2

    def state(self) -> dict:
        u = {f.name: getattr(self.update, f.name) for f in fields(self.update)}
        return {"update": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in u.items()},
                "step": self.step, "was_medium": None if self.was_medium is None else self.was_medium.cpu()}

    @classmethod
    def from_state(cls, state: dict) -> Learned:
        return cls(HotMapUpdate(**state["update"]), state["step"], state["was_medium"])


class VersionSchedule:
    """Versions learned and not yet switched to (the map) or migrated (the rows), in version order."""

    def __init__(self) -> None:
        self.to_switch: deque[Learned] = deque()
        self.to_migrate: deque[Learned] = deque()

    def learn(self, learned: Learned) -> None:
        self.to_switch.append(learned)
        self.to_migrate.append(learned)

    def latest(self) -> HotMapUpdate | None:
        """The newest version learned and not yet mapped (None: the map is the newest)."""
        return self.to_switch[-1].update if self.to_switch else None

    def switches(self, batch: int) -> list[Learned]:
        """The versions that map batch ``batch`` and were not switched to yet (removed)."""
        out = []
        while self.to_switch and self.to_switch[0].maps_from <= batch:
            out.append(self.to_switch.popleft())
        return out

    def migrations(self, step: int) -> list[Learned]:
        """The versions whose rows are due in step ``step``'s between-steps work (removed)."""
        out = []
        while self.to_migrate and self.to_migrate[0].migrate_at <= step:
            out.append(self.to_migrate.popleft())
        return out

    def state_dict(self) -> dict:
        # a version is pending a switch only if it is pending its migration or was learned with it
        pending = {id(x): x for x in (*self.to_migrate, *self.to_switch)}
        ordered = sorted(pending.values(), key=lambda x: x.update.version)
        return {"learned": [x.state() for x in ordered],
                "to_switch": [x.update.version for x in self.to_switch],
                "to_migrate": [x.update.version for x in self.to_migrate]}

    def load_state_dict(self, state: dict | None) -> None:
        """``None``: a checkpoint from before the schedule, whose versions were all applied at once."""
        self.to_switch.clear()
        self.to_migrate.clear()
        if not state:
            return
        by_version = {x.update.version: x for x in map(Learned.from_state, state["learned"])}
        self.to_switch.extend(by_version[v] for v in state["to_switch"])
        self.to_migrate.extend(by_version[v] for v in state["to_migrate"])

