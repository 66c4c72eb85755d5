"""``cafe-dist bench quality``: test AUC / logloss versus compression ratio, every method on the same
data and schedule (one epoch, as in the CAFE paper), plus the uncompressed ``full`` baseline, once per
seed.

One seed cannot rank methods whose AUCs differ by less than the spread between seeds, so every
(method, ratio) cell runs once per ``seeds`` entry and the report gives the mean and standard
deviation per cell (``summary``) and, for each method, the AUC difference to ``cafe`` paired by seed
(``paired_vs_cafe``: same seed, same data order, so the init noise partly cancels). Writes a JSON
report, markdown tables and an AUC-versus-ratio plot, and says whether the goals hold (on the means):
``cafe`` at least as good as every other compressed method at 100x and 1000x, and within 0.002 of
``full`` at 10x. A ratio a method cannot reach on the data's features is reported as such.
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
from cafe_dist.compare import RunRow, format_table, mean_std, plot_auc_vs_ratio

COMPRESSED = ("hash", "qr", "memcom", "bh", "robe", "mch", "cafe", "cafe_ml")


@dataclass(frozen=True)
class QualitySpec:
    data: str  # converted dataset directory, or a Criteo TSV file
    methods: tuple[str, ...] = COMPRESSED
    ratios: tuple[float, ...] = (10, 100, 1000, 10000)
    num_workers: int = 1
    batch_size: int = 256
    seeds: tuple[int, ...] = (0,)
    storage_path: str = "runs/bench"
    extra: tuple[str, ...] = field(default_factory=tuple)  # --set overrides for every run
    rows: int | None = None  # use only the first N rows of the data (a quick run)


def _row(method: str, ratio: float, seed: int, out: dict[str, Any]) -> dict[str, Any]:
    if "error" in out:
        return {"method": method, "ratio": ratio, "seed": seed, "error": out["error"]}
    return {"method": method, "ratio": ratio, "seed": seed, "auc": out["auc"], "logloss": out["logloss"],
            "compression_ratio": out["compression_ratio"], "embedding_bytes": out["embedding_bytes"],
            "wall_time_s": out["wall_time_s"], "samples_per_sec": out["samples_per_sec"], "steps": out["steps"],
            **{k: out[k] for k in ("hot_slots", "hot_slots_used", "hot_coverage", "oracle_coverage") if k in out}}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {ratio: {auc_mean, auc_std, logloss_mean, n}}}`` over the seeds that ran."""
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in runs:
        if "auc" in r:
            cells.setdefault((r["method"], r["ratio"]), []).append(r)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (method, ratio), rs in cells.items():
        auc_mean, auc_std = mean_std([r["auc"] for r in rs])
        out.setdefault(method, {})[f"{ratio:g}"] = {
            "auc_mean": auc_mean, "auc_std": auc_std, "logloss_mean": mean_std([r["logloss"] for r in rs])[0],
            "compression_ratio": mean_std([r.get("compression_ratio", ratio) for r in rs])[0], "n": len(rs)}
    return out


def paired_vs_cafe(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {ratio: {diff_mean, diff_std, n}}}``: the method's AUC minus cafe's, same seed and
    ratio (positive: the method is ahead of cafe)."""
    auc = {(r["method"], r["ratio"], r["seed"]): r["auc"] for r in runs if "auc" in r}
    diffs: dict[tuple[str, float], list[float]] = {}
    for (method, ratio, seed), a in auc.items():
        mine = auc.get(("cafe", ratio, seed))
        if method != "cafe" and mine is not None:
            diffs.setdefault((method, ratio), []).append(a - mine)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (method, ratio), ds in sorted(diffs.items()):
        mean, std = mean_std(ds)
        out.setdefault(method, {})[f"{ratio:g}"] = {"diff_mean": mean, "diff_std": std, "n": len(ds)}
    return out


def goals(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the quality goals hold on the seed means of these runs (None where runs are missing)."""
    auc = {(m, float(r)): c["auc_mean"] for m, by in summarise(runs).items() for r, c in by.items()}
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
    """Mean AUC (± standard deviation over seeds, n) per method (rows) and ratio (columns), the
    paired difference to cafe, then every run in detail."""
    summary, paired = summarise(runs), paired_vs_cafe(runs)
    tried = {(r["method"], r["ratio"]) for r in runs}
    methods = list(dict.fromkeys(r["method"] for r in runs))
    head = "| method | " + " | ".join(f"{x:g}x" for x in ratios) + " |"
    lines = [head, "|---|" + "---|" * len(ratios)]
    for m in methods:
        cells = []
        for x in ratios:
            c = summary.get(m, {}).get(f"{x:g}")
            cells.append("-" if (m, float(x)) not in tried else "n/a" if c is None else
                         f"{c['auc_mean']:.4f}" + (f" ± {c['auc_std']:.4f} (n={c['n']})" if c["n"] > 1 else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if paired:
        lines += ["", "AUC minus cafe's, paired by seed (mean ± sd; positive: ahead of cafe):", "",
                  head, "|---|" + "---|" * len(ratios)]
        for m, by in paired.items():
            cells = [f"{by[f'{x:g}']['diff_mean']:+.4f} ± {by[f'{x:g}']['diff_std']:.4f}" if f"{x:g}" in by else "-"
                     for x in ratios]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    rows = [RunRow("", f"{r['method']}-{r['ratio']:g}x-s{r['seed']}", r["method"], r.get("compression_ratio", r["ratio"]),
                   r.get("embedding_bytes", math.nan) / 1e6, r.get("auc", math.nan), r.get("logloss", math.nan),
                   r.get("samples_per_sec", math.nan), workers, "FINISHED" if "auc" in r else "UNREACHABLE")
            for r in runs]
    return "\n".join(lines) + "\n\n" + format_table(rows, markdown=True)


def run_quality_bench(spec: QualitySpec, output_json: str | Path | None = None, markdown: str | Path | None = None,
                      plot: str | Path | None = None) -> dict[str, Any]:
    data_dir = prepare_data(spec.data, spec.storage_path, rows=spec.rows)
    common = (f"train.batch_size={spec.batch_size}", "train.epochs=1", "train.max_steps=null", "train.log_every=100",
              *spec.extra)
    cells = [("full", 1.0)] + [(m, float(r)) for m in spec.methods for r in spec.ratios if m != "full"]
    runs = []
    t0 = time.perf_counter()
    total = len(cells) * len(spec.seeds)
    for i, (seed, (method, ratio)) in enumerate(((s, c) for s in spec.seeds for c in cells), 1):
        print(f"[cafe-dist bench quality] {i}/{total}: {method} at {ratio:g}x, seed {seed}", file=sys.stderr,
              flush=True)
        out = train_once(data_dir, method, ratio, spec.num_workers, spec.storage_path,
                         (f"train.seed={seed}", *common))
        runs.append(_row(method, ratio, seed, out))
    result = {"spec": asdict(spec), "data_dir": data_dir, "runs": runs, "summary": summarise(runs),
              "paired_vs_cafe": paired_vs_cafe(runs), "goals": goals(runs), "wall_time_s": time.perf_counter() - t0}
    table = markdown_tables(runs, (1.0, *map(float, spec.ratios)), spec.num_workers)
    result["markdown"] = table
    if markdown:
        Path(markdown).write_text(table + "\n")
    if plot:
        rows = [RunRow("", r["method"], r["method"], r["compression_ratio"], 0.0, r["auc"], r["logloss"], 0.0, 0,
                       "FINISHED") for r in runs if "auc" in r]  # one per seed: the plot shows mean ± sd
        plot_auc_vs_ratio(rows, plot, title=f"AUC versus compression: {Path(data_dir).name}")
        result["plot"] = str(plot)
    if output_json:
        Path(output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(output_json).write_text(json.dumps(result, indent=2) + "\n")
    return result
