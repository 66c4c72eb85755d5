"""``cafe-dist compare``: the runs of one MLflow experiment side by side, and AUC versus ratio.

Reads what ``cafe-dist train`` logged (tags ``method``/``world_size``, final metrics) through
``MlflowClient``, so it works on any store: the local sqlite file or an ``mlflow server``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from cafe_dist.mlflow_store import existing_store, open_store, resolve_uri


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    method: str
    compression_ratio: float  # achieved (requested when the run did not finish)
    embedding_mb: float
    auc: float
    logloss: float
    samples_per_sec: float  # steady state (what the table shows): RunResult.steady_samples_per_sec
    world_size: int
    status: str
    requested_ratio: float = math.nan  # embedding.compression_ratio as asked (the plot's x)
    data: str = "-"  # the dataset's name (tag ``dataset``, beside its MLflow dataset input); "-": logged before


COLUMNS = (("name", "run", "{}"), ("method", "method", "{}"), ("data", "data", "{}"),
           ("compression_ratio", "ratio", "{:,.1f}"),
           ("embedding_mb", "emb MB", "{:,.3f}"), ("auc", "AUC", "{:.4f}"), ("logloss", "logloss", "{:.4f}"),
           ("samples_per_sec", "steady samples/s", "{:,.0f}"), ("world_size", "workers", "{}"),
           ("status", "status", "{}"))


TEXT = {"name", "method", "data", "status"}
FULL = "full"  # the uncompressed method: the plot's reference line


def collect_runs(tracking_uri: str | None, experiment: str | None,
                 tags: dict[str, str] | None = None, data: str | None = None) -> list[RunRow]:
    """Every run of ``experiment`` (None: of every experiment, each run named ``experiment/run``),
    optionally only those carrying ``tags`` and those trained on dataset ``data`` (its name), by
    method then ratio."""
    tags = {**(tags or {}), **({"dataset": data} if data else {})}
    uri = resolve_uri(tracking_uri)
    client, _ = existing_store(uri)
    if experiment is None:
        exps = client.search_experiments()
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise LookupError(f"no experiment {experiment!r} in {uri}; experiments there: "
                              f"{', '.join(names) or 'none'} (pick one with --experiment, or --all-experiments)")
        exps = [exp]
    names = {e.experiment_id: e.name for e in exps}
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items())
    rows = []
    for run in client.search_runs(list(names), filter_string=query, max_results=10_000):
        t = run.data.tags
        name = run.info.run_name or run.info.run_id[:8]

        def final(key: str, default: float = math.nan, m=run.data.metrics) -> float:
            return m.get(f"final_{key}", m.get(key, default))  # un-prefixed: runs logged before 2026-11-28

        rows.append(RunRow(
            run_id=run.info.run_id, name=name if experiment else f"{names[run.info.experiment_id]}/{name}",
            method=t.get("method", "?"),
            compression_ratio=final("compression_ratio", float(t.get("compression_ratio", "nan"))),
            embedding_mb=final("embedding_bytes") / 1e6, auc=final("auc"), logloss=final("logloss"),
            samples_per_sec=final("steady_samples_per_sec", final("samples_per_sec")),
            world_size=int(t.get("world_size", 0)),
            status=run.info.status, requested_ratio=float(t.get("compression_ratio", "nan")),
            data=t.get("dataset", "-")))
    return sorted(rows, key=lambda r: (r.method, r.compression_ratio, r.world_size, r.name))


def runs_elsewhere(tracking_uri: str | None, shown: str) -> dict[str, int]:
    """Experiments other than ``shown`` that hold runs, with their run counts."""
    client, _ = open_store(resolve_uri(tracking_uri))
    out = {}
    for e in client.search_experiments():
        if e.name != shown:
            n = len(client.search_runs([e.experiment_id], max_results=1000))
            if n:
                out[e.name] = n
    return out


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
    left = {i for i, (key, _, _) in enumerate(COLUMNS) if key in TEXT}  # numbers right-aligned
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


def ratio_ticks(ratios: set[float]) -> tuple[list[float], list[str], tuple[float, float]]:
    """A tick at every ratio asked for, labelled as asked ("1x", "100x", "10,000x"), and x limits
    half a decade (on the log axis, a factor of 2) around them, so one ratio alone still reads."""
    where = sorted(ratios)
    return where, [f"{t:,g}x" for t in where], (where[0] / 2, where[-1] * 2)


def plot_auc_vs_ratio(rows: list[RunRow], path: str | Path, title: str = "") -> int:
    """One line per method through its finished runs, log x; repeated runs at one ratio (seeds) give
    their mean with a standard-deviation error bar; ``full`` is a dashed reference line (its spread
    shaded). Returns the number of points drawn (the reference line counts as one)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.status == "FINISHED" and not math.isnan(r.auc)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    points, ticks = 0, set()
    full = [r.auc for r in done if r.method == FULL]
    if full:  # uncompressed: a reference line (with its spread over seeds), not a point at 1x
        mean, sd = mean_std(full)
        ax.axhline(mean, color="0.3", linestyle="--", linewidth=1, label=f"full (1x): {mean:.4f}")
        if sd:
            ax.axhspan(mean - sd, mean + sd, color="0.5", alpha=0.15)
    for method in sorted({r.method for r in done} - {FULL}):
        by_ratio: dict[float, list[float]] = {}
        for r in done:
            if r.method == method:
                x = r.requested_ratio if not math.isnan(r.requested_ratio) else r.compression_ratio
                by_ratio.setdefault(round(x, 1), []).append(r.auc)
        xs = sorted(by_ratio)
        means, sds = zip(*(mean_std(by_ratio[x]) for x in xs))
        ax.errorbar(xs, means, yerr=sds if any(sds) else None, marker="o", capsize=3, label=method)
        points += len(xs)
        ticks.update(xs)
    ax.set_xscale("log")
    if ticks:
        from matplotlib.ticker import NullLocator

        where, labels, lim = ratio_ticks(ticks)
        ax.set_xticks(where, labels)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(*lim)
    ax.set_xlabel("compression ratio asked for (full bytes / embedding bytes)")
    ax.set_ylabel("test AUC")
    ax.set_title(title or "AUC versus compression")
    ax.grid(True, which="both", alpha=0.3)
    if points or full:
        ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points + bool(full)
