"""``cafe-dist compare``: tracked runs side by side."""

from __future__ import annotations

import argparse
import sys

from cafe_dist.commands.args import key_value


def cmd_compare(args: argparse.Namespace) -> int:
    from cafe_dist.compare import collect_runs, format_table, plot_auc_vs_ratio, runs_elsewhere, to_json

    tags = dict(args.tag or [])
    experiment = None if args.all_experiments else args.experiment
    rows = collect_runs(args.tracking_uri, experiment, tags=tags, data=args.data)
    where = "every experiment" if experiment is None else f"experiment {experiment!r}"
    if args.format == "json":
        print(to_json(rows))
    else:
        print(format_table(rows, markdown=args.format == "markdown") if rows else
              f"no runs in {where}" + (f" with tags {tags}" if tags else "") + (f" on data {args.data!r}"
                                                                                  if args.data else ""))
        if experiment is not None and (others := runs_elsewhere(args.tracking_uri, experiment)):
            print(f"showing {where}; runs also in " + ", ".join(f"{n!r} ({k})" for n, k in others.items())
                  + ": --experiment NAME or --all-experiments", file=sys.stderr)
    if args.plot:
        n = plot_auc_vs_ratio(rows, args.plot, title=f"{experiment or 'all experiments'}: AUC versus compression")
        print(f"plot: {args.plot} ({n} points)", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help="table of tracked runs (MLflow), optional AUC-vs-ratio plot")
    c.add_argument("--experiment", default="cafe-dist", help="MLflow experiment (default cafe-dist)")
    c.add_argument("--all-experiments", action="store_true", help="the runs of every experiment")
    c.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    c.add_argument("--tag", action="append", type=key_value, metavar="KEY=VALUE", help="only runs with this tag, e.g. sweep=NAME")
    c.add_argument("--data", metavar="NAME", help="only runs trained on this dataset (its directory's name, as the "
                   "data column shows it)")
    c.add_argument("--format", choices=["text", "markdown", "json"], default="text",
                   help="a text table (default), a Markdown table, or JSON")
    c.add_argument("--plot", metavar="PATH", help="write AUC versus compression ratio per method (PNG)")
    c.set_defaults(handler=cmd_compare)
