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

The JSON report is rewritten after every run (marked ``partial`` until the last), so a bench stopped
after hours keeps what it finished, and ``--merge`` pools reports of separate processes (one per
seed, or a later run of the cells that were missing) into one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cafe_dist.bench.runs import prepare_data, train_once
from cafe_dist.compare import RunRow, format_table, mean_std, plot_auc_vs_ratio
from cafe_dist.embeddings.registry import REGISTRY, compressed_methods
from cafe_dist.result import RunResult

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class QualitySpec:
    data: str  # converted dataset directory, or a Criteo TSV file
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(compressed_methods()))
    ratios: tuple[float, ...] = (10, 100, 1000, 10000)
    num_workers: int = 1
    batch_size: int = 256
    seeds: tuple[int, ...] = (0,)
    storage_path: str = "runs/bench"
    extra: tuple[str, ...] = field(default_factory=tuple)  # --set overrides for every run
    rows: int | None = None  # use only the first N rows of the data (a quick run)
    baseline: bool = True  # run `full` too (False: another report, pooled with --merge, has it)


def _row(method: str, ratio: float, seed: int, out: RunResult | str) -> dict[str, Any]:
    if isinstance(out, str):
        return {"method": method, "ratio": ratio, "seed": seed, "error": out}
    return {"method": method, "ratio": ratio, "seed": seed, "auc": out.auc, "logloss": out.logloss,
            "compression_ratio": out.compression_ratio, "embedding_bytes": out.embedding_bytes,
            "wall_time_s": out.wall_time_s, "samples_per_sec": out.samples_per_sec, "steps": out.steps,
            **{k: out.stats[k] for k in ("hot_slots", "hot_slots_used", "hot_coverage", "oracle_coverage")
               if k in out.stats}}


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


def _paired_cell(c: dict[str, float] | None) -> str:
    if c is None:
        return "-"
    return f"{c['diff_mean']:+.4f}" + (f" ± {c['diff_std']:.4f} (n={c['n']})" if c["n"] > 1 else "")


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
            cells = [_paired_cell(by.get(f"{x:g}")) for x in ratios]
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
    # ratio by ratio, in the order given: a bench stopped early has whole columns, the first asked for
    cells = [("full", 1.0)] * spec.baseline + [(m, float(r)) for r in spec.ratios for m in spec.methods
                                               if m != "full"]
    runs = []
    t0 = time.perf_counter()
    total = len(cells) * len(spec.seeds)
    for i, (seed, (method, ratio)) in enumerate(((s, c) for s in spec.seeds for c in cells), 1):
        log.info("bench quality %d/%d: %s at %gx, seed %d", i, total, method, ratio, seed)
        out = train_once(data_dir, method, ratio, spec.num_workers, spec.storage_path,
                         (f"train.seed={seed}", *common))
        runs.append(_row(method, ratio, seed, out))
        if output_json and i < total:  # a stopped bench keeps the runs it finished
            report({"spec": asdict(spec), "data_dir": data_dir, "partial": f"{i}/{total} runs"}, runs, spec.ratios,
                   spec.num_workers, time.perf_counter() - t0, output_json, None, None)
    return report({"spec": asdict(spec), "data_dir": data_dir}, runs, spec.ratios, spec.num_workers,
                  time.perf_counter() - t0, output_json, markdown, plot)


def merge_reports(paths: list[str | Path], output_json: str | Path | None = None, markdown: str | Path | None = None,
                  plot: str | Path | None = None) -> dict[str, Any]:
    """One report from several earlier ones (e.g. one process per seed, so a stopped bench loses
    one seed's runs at most): their runs pooled, one per (method, ratio, seed), the later file's
    run where two report the same cell; they must share data, batch size and workers."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    if not loaded:
        raise ValueError("nothing to merge: give the JSON reports of earlier `bench quality` runs")
    def setting(r: dict[str, Any]) -> tuple[Any, ...]:
        return Path(r["data_dir"]).name, r["spec"]["batch_size"], r["spec"]["num_workers"], r["spec"]["extra"]

    first = loaded[0]
    for p, r in zip(paths, loaded):
        if "runs" not in r or "spec" not in r:
            raise ValueError(f"{p}: not a `bench quality` report (no runs/spec)")
        if setting(r) != setting(first):
            raise ValueError(f"{p} and {paths[0]} differ in data, batch size, workers or --set overrides: "
                             "their runs are not one experiment")
    cells = {(r["method"], r["ratio"], r["seed"]): r for rep in loaded for r in rep["runs"]}
    order = {m: i for i, m in enumerate(REGISTRY)}
    runs = sorted(cells.values(), key=lambda r: (r["seed"], order.get(r["method"], 99), r["ratio"]))
    ratios = tuple(sorted({float(r) for rep in loaded for r in rep["spec"]["ratios"]}))
    head = {"spec": {**first["spec"], "ratios": list(ratios), "seeds": sorted({r["seed"] for r in runs}),
                     "methods": list(dict.fromkeys(r["method"] for r in runs if r["method"] != "full"))},
            "data_dir": first["data_dir"], "merged_from": [str(p) for p in paths]}
    return report(head, runs, ratios, first["spec"]["num_workers"],
                  sum(r.get("wall_time_s", 0.0) for r in loaded), output_json, markdown, plot)


def report(head: dict[str, Any], runs: list[dict[str, Any]], ratios: tuple[float, ...], workers: int, wall_s: float,
           output_json: str | Path | None, markdown: str | Path | None, plot: str | Path | None) -> dict[str, Any]:
    """The JSON report (``runs``, ``summary``, ``paired_vs_cafe``, ``goals``) plus its markdown tables
    and plot, written where asked."""
    result = {**head, "runs": runs, "summary": summarise(runs), "paired_vs_cafe": paired_vs_cafe(runs),
              "goals": goals(runs), "wall_time_s": wall_s}
    result["markdown"] = markdown_tables(runs, (1.0, *sorted(map(float, ratios))), workers)
    if markdown:
        Path(markdown).write_text(result["markdown"] + "\n")
    if plot:
        rows = [RunRow("", r["method"], r["method"], r["compression_ratio"], 0.0, r["auc"], r["logloss"], 0.0, 0,
                       "FINISHED", requested_ratio=float(r["ratio"]))
                for r in runs if "auc" in r]  # one per seed: the plot shows mean ± sd
        plot_auc_vs_ratio(rows, plot, title=f"AUC versus compression: {Path(head['data_dir']).name}")
        result["plot"] = str(plot)
    if output_json:
        path = Path(output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)  # a reader (or a stop mid-write) never sees half a report
    return result
