"""``cafe-dist compare``: the runs of one MLflow experiment side by side, and AUC versus ratio.

Reads what ``cafe-dist train`` logged (tags ``method``/``world_size``, final metrics) through
``MlflowClient``, so it works on any store: the local sqlite file or an ``mlflow server``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from cafe_dist.tracking import open_store, resolve_uri


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    method: str
    compression_ratio: float  # achieved (requested when the run did not finish)
    embedding_mb: float
    auc: float
    logloss: float
    samples_per_sec: float
    world_size: int
    status: str


COLUMNS = (("name", "run", "{}"), ("method", "method", "{}"), ("compression_ratio", "ratio", "{:,.1f}"),
           ("embedding_mb", "emb MB", "{:,.3f}"), ("auc", "AUC", "{:.4f}"), ("logloss", "logloss", "{:.4f}"),
           ("samples_per_sec", "samples/s", "{:,.0f}"), ("world_size", "workers", "{}"),
           ("status", "status", "{}"))


def collect_runs(tracking_uri: str | None, experiment: str, tags: dict[str, str] | None = None) -> list[RunRow]:
    """Every run of ``experiment`` (optionally only those carrying ``tags``), by method then ratio."""
    uri = resolve_uri(tracking_uri)
    client, _ = open_store(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise LookupError(f"no experiment {experiment!r} in {uri}; experiments there: "
                          f"{', '.join(names) or 'none'} (pick one with --experiment)")
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    rows = []
    for run in client.search_runs([exp.experiment_id], filter_string=query, max_results=10_000):
        t = run.data.tags

        def final(key: str, default: float = math.nan, m=run.data.metrics) -> float:
            return m.get(f"final_{key}", m.get(key, default))  # un-prefixed: runs logged before 2026-11-28

        rows.append(RunRow(
            run_id=run.info.run_id, name=run.info.run_name or run.info.run_id[:8], method=t.get("method", "?"),
            compression_ratio=final("compression_ratio", float(t.get("compression_ratio", "nan"))),
            embedding_mb=final("embedding_bytes") / 1e6, auc=final("auc"), logloss=final("logloss"),
            samples_per_sec=final("samples_per_sec"), world_size=int(t.get("world_size", 0)),
            status=run.info.status))
    return sorted(rows, key=lambda r: (r.method, r.compression_ratio, r.world_size, r.name))


def _cell(fmt: str, value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return fmt.format(value)


def format_table(rows: list[RunRow], markdown: bool = False) -> str:
    header = [h for _, h, _ in COLUMNS]
    body = [[_cell(fmt, getattr(r, key)) for key, _, fmt in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    left = {0, 1, 8}  # text columns left-aligned, numbers right-aligned
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i in left else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join(line.rstrip() for line in [fmt_row(header), fmt_row(["-" * w for w in widths]),
                                                  *map(fmt_row, body)])


def to_json(rows: list[RunRow]) -> str:
    return json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in asdict(r).items()} for r in rows], indent=2)


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of repeated runs (seeds)."""
    mean = sum(xs) / len(xs)
    return mean, (math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def plot_auc_vs_ratio(rows: list[RunRow], path: str | Path, title: str = "") -> int:
    """One line per method through its finished runs, log x; repeated runs at one ratio (seeds) give
    their mean with a standard-deviation error bar. Returns the number of points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.status == "FINISHED" and not math.isnan(r.auc)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    points = 0
    for method in sorted({r.method for r in done}):
        by_ratio: dict[float, list[float]] = {}
        for r in done:
            if r.method == method:
                by_ratio.setdefault(round(r.compression_ratio, 1), []).append(r.auc)
        xs = sorted(by_ratio)
        means, sds = zip(*(mean_std(by_ratio[x]) for x in xs))
        ax.errorbar(xs, means, yerr=sds if any(sds) else None, marker="o", capsize=3, label=method)
        points += len(xs)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (full bytes / embedding bytes)")
    ax.set_ylabel("test AUC")
    ax.set_title(title or "AUC versus compression")
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points
