"""The core GPU check (``scripts/gpu-check.sh --core``): what a bare GPU machine can time of cafe-dist.

A first look at a new GPU is often a box with Python, torch for CUDA, numpy, pyarrow and numba and
nothing else (no network, no TorchRec, fbgemm, Ray or MLflow). This module imports only those (the
shell script runs it with TorchRec, fbgemm, Ray and MLflow made unimportable) and times, on the GPU:

- ``sketch_insert``: the HotSketch tensor path (what a GPU worker runs) on a Zipf stream;
- ``hashing``: the hash of raw values into a table's rows (every compressed method's id transform);
- ``cafe_remap`` and ``cafe_scoring``: CAFE's value → key hash plus hot-map lookup, and the
  importance of every occurrence (bag gradient norms, normalised per field), at batch 8,192 and 65,536;
- ``feeding``: collated batches (13 dense, 26 ids, a label) copied from pinned host memory to the GPU;
- ``dlrm_step``: a DLRM training step (MLPerf's arches) with ``torch.nn.EmbeddingBag`` tables standing
  in for fbgemm's, at batch 8,192 and 65,536.

Each figure sits beside what one H200 needs at 2.1 M samples/s (MLPerf Training v4.0): 2.1 M rows/s
and samples/s, and 26 x 2.1 M = 54.6 M ids/s. ``--dry-run`` runs the same code on the CPU at toy
sizes (CI). Output: ``DIR/gpu-core.json``, one key per figure, rewritten after each part.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cafe_dist.embeddings.cafe.hotmap import HotMap, HotMapUpdate
from cafe_dist.embeddings.cafe.scoring import ImportanceScorer, occurrence_norms
from cafe_dist.embeddings.cafe.sketch import HotSketch
from cafe_dist.embeddings.hashing import hash_mod
from cafe_dist.rates import H200_SAMPLES_PER_S

FEATURES, DENSE = 26, 13
H200_IDS_PER_S = H200_SAMPLES_PER_S * FEATURES
FORBIDDEN = ("torchrec", "fbgemm_gpu", "ray", "mlflow")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_rate(fn, items: int, device: torch.device, repeats: int) -> float:
    """Items per second of ``fn`` (median of ``repeats`` timed calls after one warm-up)."""
    fn()
    _sync(device)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        runs.append(time.perf_counter() - t0)
    return items / float(np.median(runs))


def _zipf_ids(n: int, distinct: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(distinct)[(rng.zipf(1.1, size=n) - 1) % distinct]


def sketch_insert(device: torch.device, num_ids: int, batch: int) -> dict[str, Any]:
    ids = torch.from_numpy(_zipf_ids(num_ids, 10_000_000)).to(device)
    sketch = HotSketch(100_000, device=device, use_numba=False)
    sketch.insert(ids[:batch])
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, num_ids, batch):
        sketch.insert(ids[i:i + batch])
    _sync(device)
    rate = num_ids / (time.perf_counter() - t0)
    return {"ids_per_s": rate, "over_h200": rate / H200_IDS_PER_S, "batch_ids": batch, "num_ids": num_ids}


def hashing(device: torch.device, batch: int, repeats: int) -> dict[str, Any]:
    values = torch.randint(0, 2**32, (batch * FEATURES,), device=device, dtype=torch.int64)
    rows = torch.full_like(values, 1_000_003)
    rate = timed_rate(lambda: hash_mod(values, rows), values.numel(), device, repeats)
    return {"ids_per_s": rate, "over_h200": rate / H200_IDS_PER_S, "batch": batch}


def cafe_parts(device: torch.device, batch: int, hot: int, repeats: int) -> dict[str, Any]:
    """CAFE's remap (a key per value, the hot-map lookup) and scoring on one batch of raw values."""
    n = batch * FEATURES
    values = torch.from_numpy(_zipf_ids(n, 10_000_000, seed=batch)).to(device)
    feature = torch.arange(FEATURES, device=device).repeat_interleave(batch)
    space = torch.full((FEATURES,), (2**31 - 2) // FEATURES, device=device, dtype=torch.int64)
    offset = torch.arange(FEATURES, device=device, dtype=torch.int64) * space[0]

    def keys_of() -> torch.Tensor:
        return offset.index_select(0, feature) + hash_mod(values, space.index_select(0, feature), seed=7)

    keys = keys_of()
    hot_map = HotMap(device)
    top = torch.unique(keys)[:hot]
    hot_map.apply(HotMapUpdate(1, promoted_keys=top, promoted_slots=torch.arange(top.numel(), device=device)))
    remap = timed_rate(lambda: hot_map.lookup(keys_of()), n, device, repeats)
    grad = torch.randn(batch, FEATURES, 16, device=device)
    segment = torch.arange(n, device=device)  # one value per bag, feature-major as the KJT has them
    scorer = ImportanceScorer(1024, "grad", "field", None)

    def scoring() -> torch.Tensor:
        return scorer.normalised(feature, occurrence_norms(grad, segment))

    score = timed_rate(scoring, n, device, repeats)
    return {"batch": batch, "hot_keys": int(top.numel()), "remap_ids_per_s": remap,
            "remap_over_h200": remap / H200_IDS_PER_S, "scoring_ids_per_s": score,
            "scoring_over_h200": score / H200_IDS_PER_S}


def feeding(device: torch.device, batch: int, repeats: int) -> dict[str, Any]:
    """Collated batches from pinned host memory to the device, asynchronously, then synchronised."""
    pin = device.type == "cuda"
    host = [torch.randn(batch, DENSE), torch.randint(0, 2**32, (FEATURES * batch,), dtype=torch.int64),
            torch.ones(FEATURES * batch, dtype=torch.int32), torch.randint(0, 2, (batch,)).float()]
    if pin:
        host = [t.pin_memory() for t in host]

    def copy() -> list[torch.Tensor]:
        return [t.to(device, non_blocking=pin) for t in host]

    rate = timed_rate(copy, batch, device, repeats)
    return {"batch": batch, "pinned": pin, "rows_per_s": rate, "over_h200": rate / H200_SAMPLES_PER_S,
            "bytes_per_row": sum(t.numel() * t.element_size() for t in host) / batch}


class _DLRM(torch.nn.Module):
    """MLPerf's DLRM-v2 arches (bottom 512-256-D, dot interaction, top 1024-1024-512-256-1) with
    ``nn.EmbeddingBag`` tables standing in for fbgemm's (sum pooling, one id a bag)."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.tables = torch.nn.ModuleList(torch.nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(FEATURES))
        self.bottom = torch.nn.Sequential(torch.nn.Linear(DENSE, 512), torch.nn.ReLU(), torch.nn.Linear(512, 256),
                                          torch.nn.ReLU(), torch.nn.Linear(256, dim), torch.nn.ReLU())
        pairs = (FEATURES + 1) * FEATURES // 2
        self.top = torch.nn.Sequential(torch.nn.Linear(dim + pairs, 1024), torch.nn.ReLU(),
                                       torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                                       torch.nn.ReLU(), torch.nn.Linear(512, 256), torch.nn.ReLU(),
                                       torch.nn.Linear(256, 1))
        self.rows = rows

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        b = dense.shape[0]
        rows = hash_mod(ids, torch.full_like(ids, self.rows)).view(FEATURES, b)
        sparse = [t(rows[f].view(b, 1)) for f, t in enumerate(self.tables)]
        x = self.bottom(dense)
        z = torch.stack([x, *sparse], dim=1)
        inter = torch.bmm(z, z.transpose(1, 2))
        i, j = torch.triu_indices(FEATURES + 1, FEATURES + 1, offset=1, device=dense.device)
        return self.top(torch.cat([x, inter[:, i, j]], dim=1)).squeeze(1)


def dlrm_step(device: torch.device, batch: int, rows: int, dim: int, repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    model = _DLRM(rows, dim).to(device)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    dense = torch.randn(batch, DENSE, device=device)
    ids = torch.randint(0, 2**32, (FEATURES * batch,), device=device, dtype=torch.int64)
    labels = torch.randint(0, 2, (batch,), device=device).float()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, ids), labels)
        loss.backward()
        opt.step()

    rate = timed_rate(step, batch, device, repeats)
    return {"batch": batch, "rows_per_table": rows, "dim": dim, "samples_per_s": rate,
            "over_h200": rate / H200_SAMPLES_PER_S}


def run(out_dir: Path, dry: bool) -> dict[str, Any]:
    device = torch.device("cuda" if torch.cuda.is_available() and not dry else "cpu")
    batches = (256, 1024) if dry else (8192, 65536)
    repeats = 2 if dry else 10
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "dry_run": dry, "python": platform.python_version(), "torch": torch.__version__,
        "h200_samples_per_s": H200_SAMPLES_PER_S, "h200_ids_per_s": H200_IDS_PER_S,
        "forbidden_imported": sorted(m for m in FORBIDDEN if sys.modules.get(m) is not None)}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "gpu-core.json"
    parts = [("sketch_insert", lambda: sketch_insert(device, 200_000 if dry else 20_000_000,
                                                     1024 if dry else 65536 * FEATURES)),
             ("hashing", lambda: {str(b): hashing(device, b, repeats) for b in batches}),
             ("cafe", lambda: {str(b): cafe_parts(device, b, 1000 if dry else 1_000_000, repeats) for b in batches}),
             ("feeding", lambda: {str(b): feeding(device, b, repeats) for b in batches}),
             ("dlrm_step", lambda: {str(b): dlrm_step(device, b, 10_000 if dry else 1_000_000, 16 if dry else 128,
                                                      repeats) for b in batches})]
    for name, part in parts:
        t0 = time.perf_counter()
        try:
            result[name] = part()
        except Exception as e:  # noqa: BLE001 (every part is reported, whichever fails)
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result[f"{name}_s"] = time.perf_counter() - t0
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"[gpu-core] {name}: {result[f'{name}_s']:.1f} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu-core", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-check-out", help="the folder for gpu-core.json")
    p.add_argument("--dry-run", action="store_true", help="the same code on the CPU at toy sizes")
    args = p.parse_args(argv)
    result = run(Path(args.out), args.dry_run)
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    print(f"[gpu-core] wrote {Path(args.out) / 'gpu-core.json'} on {result['device']}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 1 if failed or result["forbidden_imported"] else 0


if __name__ == "__main__":
    sys.exit(main())
