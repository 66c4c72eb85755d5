"""``cafe-dist bench quality``: test AUC / logloss versus compression ratio, every method on the same
data, seed and schedule (one epoch, as in the CAFE paper), plus the uncompressed ``full`` baseline.

Writes a JSON report, a markdown table and an AUC-versus-ratio plot, and says whether the goals
hold: ``cafe`` at least as good as every other compressed method at 100x and 1000x, and within
0.002 of ``full`` at 10x. A ratio a method cannot reach on the data's features is reported as such.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cafe_dist.bench.runs import prepare_data, train_once
from cafe_dist.compare import RunRow, format_table, plot_auc_vs_ratio

COMPRESSED = ("hash", "qr", "memcom", "bh", "robe", "mch", "cafe", "cafe_ml")


@dataclass(frozen=True)
class QualitySpec:
    data: str  # converted dataset directory, or a Criteo TSV file
    methods: tuple[str, ...] = COMPRESSED
    ratios: tuple[float, ...] = (10, 100, 1000, 10000)
    num_workers: int = 1
    batch_size: int = 256
    seed: int = 0
    storage_path: str = "runs/bench"
    extra: tuple[str, ...] = field(default_factory=tuple)  # --set overrides for every run


def _row(method: str, ratio: float, out: dict[str, Any]) -> dict[str, Any]:
    if "error" in out:
        return {"method": method, "ratio": ratio, "error": out["error"]}
    return {"method": method, "ratio": ratio, "auc": out["auc"], "logloss": out["logloss"],
            "compression_ratio": out["compression_ratio"], "embedding_bytes": out["embedding_bytes"],
            "wall_time_s": out["wall_time_s"], "samples_per_sec": out["samples_per_sec"], "steps": out["steps"]}


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the quality goals hold on these runs (None where the runs needed are missing)."""
    auc = {(r["method"], r["ratio"]): r["auc"] for r in runs if "auc" in r}
    out: dict[str, Any] = {}
    for ratio in (100.0, 1000.0):
        others = [a for (m, r), a in auc.items() if r == ratio and m not in ("cafe", "full")]
        mine = auc.get(("cafe", ratio))
        out[f"cafe_best_at_{ratio:g}x"] = None if mine is None or not others else bool(mine >= max(others))
        if mine is not None and others:
            out[f"cafe_margin_at_{ratio:g}x"] = mine - max(others)
    full, cafe10 = auc.get(("full", 1.0)), auc.get(("cafe", 10.0))
    out["cafe_10x_within_0.002_of_full"] = None if full is None or cafe10 is None else bool(full - cafe10 <= 0.002)
    if full is not None and cafe10 is not None:
        out["cafe_10x_minus_full"] = cafe10 - full
    return out


def markdown_tables(runs: list[dict[str, Any]], ratios: tuple[float, ...], workers: int) -> str:
    """AUC per method (rows) and ratio (columns), then every run in detail."""
    by = {(r["method"], r["ratio"]): r for r in runs}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    head = "| method | " + " | ".join(f"{x:g}x" for x in ratios) + " |"
    lines = [head, "|---|" + "---|" * len(ratios)]
    for m in methods:
        cells = []
        for x in ratios:
            r = by.get((m, float(x)))
            cells.append("-" if r is None else "n/a" if "error" in r else f"{r['auc']:.4f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rows = [RunRow("", f"{r['method']}-{r['ratio']:g}x", r["method"], r.get("compression_ratio", r["ratio"]),
                   r.get("embedding_bytes", math.nan) / 1e6, r.get("auc", math.nan), r.get("logloss", math.nan),
                   r.get("samples_per_sec", math.nan), workers, "FINISHED" if "auc" in r else "UNREACHABLE")
            for r in runs]
    return "\n".join(lines) + "\n\n" + format_table(rows, markdown=True)


def run_quality_bench(spec: QualitySpec, output_json: str | Path | None = None, markdown: str | Path | None = None,
                      plot: str | Path | None = None) -> dict[str, Any]:
    data_dir = prepare_data(spec.data, spec.storage_path)
    common = (f"train.batch_size={spec.batch_size}", f"train.seed={spec.seed}", "train.epochs=1",
              "train.max_steps=null", "train.log_every=100", *spec.extra)
    cells = [("full", 1.0)] + [(m, float(r)) for m in spec.methods for r in spec.ratios if m != "full"]
    runs = []
    t0 = time.perf_counter()
    for i, (method, ratio) in enumerate(cells, 1):
        print(f"[cafe-dist bench quality] {i}/{len(cells)}: {method} at {ratio:g}x", file=sys.stderr, flush=True)
        runs.append(_row(method, ratio, train_once(data_dir, method, ratio, spec.num_workers, spec.storage_path,
                                                   common)))
    result = {"spec": asdict(spec), "data_dir": data_dir, "runs": runs, "goals": goals(runs),
              "wall_time_s": time.perf_counter() - t0}
    table = markdown_tables(runs, (1.0, *map(float, spec.ratios)), spec.num_workers)
    result["markdown"] = table
    if markdown:
        Path(markdown).write_text(table + "\n")
    if plot:
        rows = [RunRow("", r["method"], r["method"], r["compression_ratio"], 0.0, r["auc"], r["logloss"], 0.0, 0,
                       "FINISHED") for r in runs if "auc" in r]
        plot_auc_vs_ratio(rows, plot, title=f"AUC versus compression: {Path(data_dir).name}")
        result["plot"] = str(plot)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
