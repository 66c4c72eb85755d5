"""What a training run produced: the one result type the launcher returns and everything else reads.

``--output-json``, MLflow's ``result.json`` and the final checkpoint's ``result.json`` all hold
:meth:`RunResult.to_dict` (flat, as they always have); sweep, compare, tracking and the benchmarks
read the typed fields, and the method's own figures (CAFE's hot set, sync costs, ...) from
:attr:`RunResult.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

FINAL = "final_report"  # key that marks the worker's last report (it carries the whole result)


@dataclass(frozen=True)
class RunResult:
    method: str
    auc: float
    logloss: float
    compression_ratio: float  # full bytes / embedding bytes, as measured
    requested_compression_ratio: float
    embedding_bytes: int
    full_embedding_bytes: int
    steps: int
    train_samples: int
    samples_per_sec: float  # this attempt, warm-up included
    world_size: int
    eval_rows: int | None = None
    wall_time_s: float | None = None  # None when the run had finished earlier and nothing was trained
    data_path: str = ""
    checkpoint_path: str | None = None
    mlflow_run_id: str | None = None
    already_finished: bool = False
    stats: dict[str, Any] = field(default_factory=dict)  # everything else the workers reported

    @classmethod
    def from_report(cls, method: str, requested_ratio: float, metrics: dict[str, Any], **run: Any) -> RunResult:
        """From the workers' final report (``metrics``) plus what only the driver knows (``run``)."""
        if not metrics.get(FINAL):
            raise RuntimeError(f"training finished without a final report (metrics: {metrics})")
        return cls.from_dict({**metrics, "method": method, "requested_compression_ratio": requested_ratio,
                              "compression_ratio": metrics["full_embedding_bytes"] / metrics["embedding_bytes"],
                              **run})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_dict` (keys that are not fields land in ``stats``)."""
        names = {f.name for f in fields(cls)} - {"stats"}
        stats = {k: v for k, v in d.items() if k not in names and k not in ("stats", FINAL)}
        return cls(**{k: v for k, v in d.items() if k in names}, stats={**d.get("stats", {}), **stats})

    @property
    def steady_samples_per_sec(self) -> float:
        """Samples/s once warmed up (the first steps, with the JIT compiles, and evaluations left out):
        the rate to compare methods by; ``samples_per_sec`` includes start-up. A run that reported no
        steady figure (too few steps) gives its whole-run rate."""
        return float(self.stats.get("steady_samples_per_sec") or self.samples_per_sec)

    def to_dict(self) -> dict[str, Any]:
        """Flat: the fields, then the stats."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "stats"}
        return {**out, **{k: v for k, v in self.stats.items() if k not in out}}
