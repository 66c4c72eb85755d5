"""``cafe-dist train``, ``sweep`` and ``demo``: runs on Ray Train."""

from __future__ import annotations

import argparse
import json
import logging

from cafe_dist.commands.args import csv_list, output_json, overrides, positive
from cafe_dist.config import load_config


def job_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` and the flags of train and sweep, as config assignments. ``--data DIR`` replaces the
    job's data: its path, and no synthetic section (which would generate into it)."""
    return overrides(args, {"ray.num_workers": args.num_workers, "ray.address": getattr(args, "address", None),
                            "sweep.name": getattr(args, "name", None), "ray.resume": args.resume,
                            "ray.verbose": args.verbose or None, "data.path": args.data,
                            "data.synthetic": "null" if args.data else None})


def result_line(out) -> str:
    """A run's result in one line: quality, bytes, memory, speed and, for a method with hot rows, what
    share of the compressed features' lookups they served (``hot_coverage``: uncompressed features
    are not in the denominator)."""
    peak, coverage = out.stats.get("peak_rss_bytes"), out.stats.get("hot_coverage")
    return (f"result: test auc {out.auc:.4f}, logloss {out.logloss:.4f}; embeddings {out.embedding_bytes / 1e6:.2f} MB "
            f"(compression {out.compression_ratio:.1f}x)" + (f", peak worker memory {peak / 1e9:.2f} GB" if peak else "")
            + (f"; hot rows served {coverage:.1%} of the compressed features' lookups (hot_coverage)"
               if coverage is not None and coverage == coverage else "")
            + f"; {out.steady_samples_per_sec:,.0f} samples/s steady ({out.samples_per_sec:,.0f} with start-up)")


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(args.config, job_overrides(args))
    from cafe_dist.train.launcher import run_training

    out = run_training(job, args.output_json)
    if not args.output_json:  # the result on stdout, for scripts
        print(json.dumps(out.to_dict(), indent=2))
        return 0
    log = logging.getLogger("cafe_dist")
    log.info("%s; full result in %s", result_line(out), args.output_json)
    if out.mlflow_run_id:
        from cafe_dist.mlflow_store import resolve_uri

        uri = resolve_uri(job.mlflow.tracking_uri)
        log.info("MLflow run %s (browse: mlflow ui --backend-store-uri %s)", out.mlflow_run_id, uri)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    job = load_config(args.config, job_overrides(args))
    from cafe_dist.sweep import run_sweep

    out = run_sweep(job, args.methods, args.ratios, plot=args.plot, output_json=args.output_json, seeds=args.seeds,
                    concurrency=args.concurrency)
    return 1 if out["failed"] else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cafe_dist.demo import run_demo

    run_demo(args.config, overrides(args, {"ray.num_workers": args.num_workers, "ray.verbose": args.verbose or None}),
             args.ratio, args.output_json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train DLRM on Ray Train + TorchRec")
    t.add_argument("--config", required=True, metavar="FILE", help="the job (YAML)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--num-workers", type=int, help="Ray Train workers (ray.num_workers)")
    t.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    output_json(t, "the run's result")
    sw = sub.add_parser("sweep", help="train every (method, ratio) of a grid, each a tracked run; then compare")
    sw.add_argument("--config", required=True, metavar="FILE", help="the job every cell starts from (YAML)")
    sw.add_argument("--methods", type=csv_list, metavar="M1,M2", help="default: the job's sweep.methods")
    sw.add_argument("--ratios", type=lambda t: csv_list(t, float), metavar="R1,R2",
                    help="default: the job's sweep.ratios")
    sw.add_argument("--name", help="sweep name (MLflow tag sweep=NAME); default sweep-<timestamp>")
    sw.add_argument("--seeds", type=lambda t: csv_list(t, int), metavar="S1,S2",
                    help="run every cell once per seed (train.seed); the plot shows mean and sd (default: sweep.seeds, "
                         "else train.seed)")
    sw.add_argument("--concurrency", type=positive, metavar="N",
                    help="cells at once, each a Ray Tune trial (default: sweep.concurrency, else as many as the "
                         "cluster's CPUs or GPUs hold)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key for every run")
    sw.add_argument("--num-workers", type=int, help="Ray Train workers per cell (ray.num_workers)")
    sw.add_argument("--plot", metavar="PATH", help="default: <ray.storage_path>/<name>/auc_vs_ratio.png")
    output_json(sw, "every cell's result")
    for parser in (t, sw):
        parser.add_argument("--data", metavar="DIR", help="train on this converted dataset instead of the job's "
                            "data (its synthetic section included)")
        parser.add_argument("--verbose", action="store_true",
                            help="also show Ray's, TorchRec's and fbgemm's own logs and warnings (ray.verbose)")
        parser.add_argument("--resume", choices=["auto", "force"],
                            help="a named run resumes its checkpoint only if made with the same settings "
                                 "(auto, the default); force continues it after train.* settings changed")
    t.set_defaults(handler=cmd_train)
    sw.set_defaults(handler=cmd_sweep)
    dm = sub.add_parser("demo", help="CAFE and hashing at the same memory, the CAFE model exported and scoring")
    dm.add_argument("--config", default="jobs/demo.yaml", metavar="FILE", help="the job (default jobs/demo.yaml)")
    dm.add_argument("--ratio", type=float, default=100, help="compression ratio of both runs (default 100)")
    dm.add_argument("--num-workers", type=int, help="Ray Train workers per run")
    dm.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key for both runs")
    dm.add_argument("--verbose", action="store_true", help="also show Ray's, TorchRec's and fbgemm's own logs")
    output_json(dm, "both runs' results")
    dm.set_defaults(handler=cmd_demo)
