"""``cafe-dist bench coordinator``: does the hot-set exchange keep up with 8, 64, 256 workers?

The real :class:`~cafe_dist.embeddings.cafe.coordinator.CoordinatorActor` (on the local Ray, with its write-ahead
store on local disk) is fed by simulated workers: every round each of W ranks submits what a CAFE
worker sends, the strongest ``summary_factor x slots / W`` ids of its own part of the id space with
their scores (or ``candidates_per_worker``), counted from Zipf draws over the id space, each rank
from a stream of its own. The driver plays all ranks: it issues the W
submits of a round back to back, as W workers finishing the same step would, then waits for the
version. Per round it records:

- ``merge_s``: the merger's own time (``HotSetMerger._merge``);
- ``store_s``: time the actor spent writing its state (the write-ahead summaries and the merged state);
- ``bytes_in``: the W summaries; ``bytes_out``: the version's diff, times W (every rank fetches it);
- ``ready_s``: from the last submit sent to the version ready on the actor; ``e2e_s``: to the driver
  holding it.

Whether the exchange hides behind training is then arithmetic on a stated step time: a version is
applied ``sync_lag`` steps after the round was sent, so it must be ready within ``sync_lag`` steps;
and the actor must finish a round within ``sync_interval`` steps or rounds queue up.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cafe_dist.embeddings.cafe.scoring import rank_report

log = logging.getLogger("cafe_dist.bench")

# The step time the verdict assumes for CriteoTB (8192 rows per GPU, dim 128): TorchRec's DLRM example
# trains CriteoTB at roughly 2.5 M samples/s on 8 A100 (65,536 rows per global step: ~26 ms); an
# MLPerf-tuned DLRM step is ~5 ms. Both are assumptions from published figures, not measured here.
STEP_MS = {"torchrec_a100": 26.0, "mlperf_tuned": 5.0}


@dataclass(frozen=True)
class CoordinatorBenchSpec:
    workers: tuple[int, ...] = (8, 64, 256)
    slots: int = 100_000  # hot slots (CriteoTB at 1000x, dim 128: ~48 k hot rows; 100x: ~480 k)
    summary_factor: float = 2.0  # cafe.summary_factor
    candidates_per_worker: int | None = None  # default: summary_factor x slots / workers
    rounds: int = 12
    id_space: int = 187_767_399  # CriteoTB's ids at the MLPerf 40 M cap
    zipf_a: float = 1.05
    draws: int = 400_000  # ids a simulated rank's sketch has seen when it picks its candidates
    store: bool = True  # the actor writes its state before answering (as in training)
    sync_interval: int = 20
    sync_lag: int = 2
    seed: int = 0


def _pool(spec: CoordinatorBenchSpec, k: int, n: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` different rank views of the stream: the ids a rank counted from ``draws`` Zipf draws
    and their counts (sorted by id)."""
    perm_a, perm_b = int(rng.integers(1, spec.id_space)) | 1, int(rng.integers(0, spec.id_space))
    out = []
    for _ in range(n):
        ranks = rng.zipf(spec.zipf_a, size=max(spec.draws, 2 * k)) - 1
        ranks = ranks[ranks < spec.id_space]
        ids = (ranks.astype(np.int64) * perm_a + perm_b) % spec.id_space  # popular ids spread over the space
        u, c = np.unique(ids, return_counts=True)
        out.append((u, c.astype(np.float32) * rng.uniform(0.9, 1.1, size=u.size).astype(np.float32)))
    return out


def _summary(view: tuple[np.ndarray, np.ndarray], k: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """What rank ``rank`` sends: the workers' own report (:func:`rank_report`) of its counts."""
    ids, counts = view
    return rank_report(torch.from_numpy(ids), torch.from_numpy(counts), k, rank, world)


def _drifted(keys: np.ndarray, scores: np.ndarray, round_: int, id_space: int) -> tuple[np.ndarray, np.ndarray]:
    """The summary as the popularity has drifted by ``round_``: a further 0.5 % of the ids (by key)
    is replaced by fresh ones each round, so the hot set churns a little, as over a day of logs."""
    moved = (keys % 1000) < 5 * round_
    if not moved.any():
        return keys, scores
    keys = np.where(moved, (keys + id_space // 2 + round_) % id_space, keys)
    order = np.argsort(keys, kind="stable")
    return keys[order], scores[order]


def _one(spec: CoordinatorBenchSpec, world: int) -> dict:
    import ray

    from cafe_dist.embeddings.cafe.coordinator import MergeConfig, start_coordinator

    k = spec.candidates_per_worker or math.ceil(spec.summary_factor * spec.slots / world)
    rng = np.random.default_rng(spec.seed + world)
    views = _pool(spec, k, 16, rng)  # ranks cycle through 16 distinct views of the stream, shifted every round
    pool = {(rank, v): _summary(views[v], k, rank, world) for rank in range(world) for v in range(len(views))
            if (v - rank) % len(views) < spec.rounds}  # the (rank, view) pairs the rounds use
    with tempfile.TemporaryDirectory(prefix="coord-bench-") as tmp:
        name = f"bench-{world}-{time.time_ns()}"
        actor = start_coordinator(name, state_dir=tmp if spec.store else None)
        ray.get(actor.configure.remote(MergeConfig(num_slots=spec.slots, threshold=1.0, world_size=world,
                                                   admission="capacity", hysteresis=1.5)))
        rounds, calls = [], []
        for r in range(spec.rounds):
            sent, t0 = 0, time.perf_counter()
            for rank in range(world):
                keys, scores = _drifted(*pool[rank, (rank + r) % len(views)], r, spec.id_space)
                calls.append(actor.submit.remote(r, rank, keys, scores))
                sent += keys.nbytes + scores.nbytes
            t_last = time.time()
            submit_s = time.perf_counter() - t0
            update = ray.get(actor.wait.remote(r))
            e2e = time.time() - t_last
            diff = sum(t.numel() * t.element_size() for t in (update.promoted_keys, update.promoted_slots,
                                                               update.demoted_keys, update.demoted_slots))
            st = update.stats
            rounds.append({"round": r, "merge_s": st["merge_s"], "store_s": st.get("store_s", 0.0),
                           "submit_s": submit_s, "ready_s": st["ready_at"] - t_last, "e2e_s": e2e,
                           "bytes_in": sent, "bytes_out": diff * world, "candidates": st["candidates"],
                           "hot": st["hot"], "churn": st["churn"]})
        ray.get(calls)  # every submit has returned (its round merged) before the actor goes
        ray.kill(actor)
    steady = rounds[2:] if len(rounds) > 4 else rounds  # the first rounds fill the table

    def med(key: str) -> float:
        return float(np.median([x[key] for x in steady]))

    busy = med("merge_s") + med("store_s")
    row = {"workers": world, "candidates_per_worker": k, "rounds": rounds,
           **{f"{key}_median": med(key) for key in ("merge_s", "store_s", "submit_s", "ready_s", "e2e_s",
                                                    "bytes_in", "bytes_out", "candidates")},
           "actor_busy_s": busy}
    row["verdict"] = {}
    for label, ms in STEP_MS.items():
        lag_needed = math.ceil(row["e2e_s_median"] * 1000 / ms)
        # the actor's time on a round: taking the W calls, merging, saving (ready_s spans all three;
        # submit_s is this driver issuing the W calls one after another, which W workers do not)
        interval_needed = math.ceil(max(busy, row["ready_s_median"]) * 1000 / ms)
        row["verdict"][label] = {
            "step_ms": ms, "sync_lag_needed": lag_needed, "sync_interval_needed": interval_needed,
            "hidden_at_defaults": lag_needed <= spec.sync_lag and interval_needed <= spec.sync_interval}
    return row


def run_coordinator_bench(spec: CoordinatorBenchSpec, output_json: str | None = None,
                          address: str | None = None) -> dict:
    import json
    import os
    import platform

    import ray

    if not ray.is_initialized():
        os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")  # Ray's own, inside the actor
        ray.init(address=address, logging_level=logging.WARNING)
    out = {"spec": asdict(spec), "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
           "date": time.strftime("%Y-%m-%d"), "step_ms_assumed": STEP_MS, "by_workers": []}
    for world in spec.workers:
        row = _one(spec, world)
        out["by_workers"].append(row)
        log.info("%d workers: %d candidates each, merge %.3f s, store %.3f s, ready %.3f s after the last "
                 "submit (e2e %.3f s); %.1f MB in, %.2f MB out per round", world, row["candidates_per_worker"],
                 row["merge_s_median"], row["store_s_median"], row["ready_s_median"], row["e2e_s_median"],
                 row["bytes_in_median"] / 1e6, row["bytes_out_median"] / 1e6)
        if output_json:
            with open(output_json, "w") as f:
                json.dump(out, f, indent=1)
    out["markdown"] = render(out)
    if output_json:
        with open(output_json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def render(out: dict) -> str:
    spec = out["spec"]
    lines = ["| workers | ids per worker | merge s | store s | ready s | e2e s | MB in | MB out | "
             + " | ".join(f"lag/interval needed at {v:g} ms" for v in STEP_MS.values()) + " |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|" + "---|" * len(STEP_MS)]
    for r in out["by_workers"]:
        need = " | ".join(f"{v['sync_lag_needed']} / {v['sync_interval_needed']}"
                          + (" (hidden)" if v["hidden_at_defaults"] else "") for v in r["verdict"].values())
        lines.append(f"| {r['workers']} | {r['candidates_per_worker']:,} | {r['merge_s_median']:.3f} | "
                     f"{r['store_s_median']:.3f} | {r['ready_s_median']:.3f} | {r['e2e_s_median']:.3f} | "
                     f"{r['bytes_in_median'] / 1e6:.1f} | {r['bytes_out_median'] / 1e6:.2f} | {need} |")
    lines.append(f"\n{spec['slots']:,} slots, {spec['rounds']} rounds (medians after the first 2), write-ahead "
                 f"store {'on' if spec['store'] else 'off'}; 'hidden': within sync_lag {spec['sync_lag']} and "
                 f"sync_interval {spec['sync_interval']} at that step time")
    return "\n".join(lines)
