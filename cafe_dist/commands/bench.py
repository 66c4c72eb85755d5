"""``cafe-dist bench ...``: the benchmarks (results belong in BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import json
import sys

from cafe_dist.commands.args import csv_list, output_json


def _emit(out: dict, output_json: str | None) -> int:
    """The report as JSON on stdout (and in ``--output-json``)."""
    text = json.dumps(out, indent=2)
    if output_json:
        from cafe_dist.outputs import write_text

        write_text(output_json, text + "\n")
    print(text)
    return 0


def _quality(args: argparse.Namespace) -> int:
    from cafe_dist.bench.quality import QualitySpec, merge_reports, run_quality_bench
    from cafe_dist.embeddings.registry import compressed_methods

    if args.merge:
        out = merge_reports(args.merge, output_json=args.output_json, markdown=args.markdown, plot=args.plot)
    elif not args.data:
        raise SystemExit("cafe-dist bench quality: give --data (to run) or --merge (to pool earlier reports)")
    else:
        out = run_quality_bench(QualitySpec(
            data=args.data, methods=tuple(args.methods or compressed_methods()), ratios=tuple(args.ratios),
            num_workers=args.num_workers,
            batch_size=args.batch_size, seeds=tuple(args.seeds if args.seeds is not None else [args.seed]),
            storage_path=args.storage_path, extra=tuple(args.set or ()), rows=args.rows,
            baseline=not args.skip_full),
            output_json=args.output_json, markdown=args.markdown, plot=args.plot)
    print(out["markdown"] + "\n\ngoals: " + json.dumps(out["goals"]), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def _throughput(args: argparse.Namespace) -> int:
    from cafe_dist.bench.throughput import ThroughputSpec, run_throughput_bench
    from cafe_dist.embeddings.registry import REGISTRY

    out = run_throughput_bench(ThroughputSpec(
        methods=tuple(args.methods or REGISTRY), num_workers=tuple(args.num_workers), ratio=args.ratio, steps=args.steps,
        batch_size=args.batch_size, data=args.data, storage_path=args.storage_path,
        extra=tuple(args.set or ()), repeats=args.repeats), output_json=args.output_json)
    for m, r in out["methods"].items():
        print(f"{m:8s} " + "  ".join(f"{w}w {b['samples_per_sec']:>9,.0f}/s" for w, b in r["by_workers"].items()
                                     if "samples_per_sec" in b)
              + (f"  vs full {r['vs_full']:.2f}" if "vs_full" in r else "")
              + (f"  vs hash {r['vs_hash']:.2f}" if "vs_hash" in r else ""), file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


def _serving(args: argparse.Namespace) -> int:
    from cafe_dist.bench.serving import ServingSpec, run_serving_bench
    from cafe_dist.embeddings.registry import REGISTRY

    run_serving_bench(ServingSpec(data=args.data, methods=tuple(args.methods or REGISTRY), ratio=args.ratio,
                                  batch_size=args.batch_size, rows=args.rows, storage_path=args.storage_path),
                      output_json=args.output_json, markdown=args.markdown)
    return 0


def _coordinator(args: argparse.Namespace) -> int:
    from cafe_dist.bench.coordinator import CoordinatorBenchSpec, run_coordinator_bench

    out = run_coordinator_bench(CoordinatorBenchSpec(
        workers=tuple(args.workers), slots=args.slots, candidates_per_worker=args.candidates_per_worker,
        rounds=args.rounds, store=not args.no_store, sync_interval=args.sync_interval, sync_lag=args.sync_lag),
        output_json=args.output_json, address=args.address)
    print(out["markdown"])
    return 0


def _drift(args: argparse.Namespace) -> int:
    from cafe_dist.bench.drift import DriftBenchSpec, run_drift_bench

    out = run_drift_bench(DriftBenchSpec(
        rows=args.rows, cardinality_scale=args.cardinality_scale, drift_period=args.drift_period,
        ratio=args.ratio, methods=tuple(args.methods), num_workers=args.num_workers,
        data_dir=args.data_dir, extra=tuple(args.set or ())))
    for m, r in out["runs"].items():
        rec = " ".join(f"{s['min']:.2f}→{s['last']:.2f}" for s in r.get("recovery", []))
        print(f"{m:8s} auc {r['auc']:.4f} logloss {r['logloss']:.4f} ratio {r['compression_ratio']:.1f}"
              + (f"  hot top-ids per period (min→last): {rec}" if rec else ""), file=sys.stderr)
    return _emit(out, args.output_json)


def _sketch(args: argparse.Namespace) -> int:
    from cafe_dist.bench.sketch import SketchBenchSpec, run_sketch_bench

    out = run_sketch_bench(SketchBenchSpec(
        num_ids=args.num_ids, distinct=args.distinct, hot_slots=args.hot_slots, threshold=args.threshold,
        batch=args.batch, buckets=args.buckets, recall_k=args.recall_k, precision_k=args.precision_k,
        seed=args.seed, path=args.path))
    return _emit(out, args.output_json)


def _conversion(args: argparse.Namespace) -> int:
    from cafe_dist.bench.conversion import run_conversion_bench

    out = run_conversion_bench(args.input, args.format, args.repeats)
    print(f"{out['rows']:,} rows ({out['bytes'] / 2**20:,.0f} MiB) on one core: pyarrow's CSV reader "
          f"{out['pyarrow_rows_per_s']:,.0f} rows/s, cafe-dist data {args.format} {out['conversion_rows_per_s']:,.0f} "
          f"rows/s ({out['conversion_over_pyarrow']:.2f}x)", file=sys.stderr)
    return _emit(out, args.output_json)


def _input(args: argparse.Namespace) -> int:
    from cafe_dist.bench.input import run_input_bench

    out = run_input_bench(args.data, args.batch_size, num_workers=args.num_workers, rows=args.rows,
                          repeats=args.repeats, ray_data=args.ray_data, use_gpu=args.use_gpu,
                          storage_path=args.storage_path, output_json=args.output_json)
    for r in out["records"]:
        print(f"batch {r['batch_size']:>7,}: {r['rows_per_s']:>12,.0f} rows/s per worker ({r['num_workers']} "
              f"worker(s), {out['device']}), pyarrow on one core {r['pyarrow_rows_per_s']:,.0f} ({r['ratio']:.2f}x); "
              f"{r['rows_per_cpu_s']:,.0f} rows per core-second: {r['cores_per_h200']:.1f} cores feed one H200",
              file=sys.stderr)
    return _emit(out, None)


def _cafe_step(args: argparse.Namespace) -> int:
    from cafe_dist.bench.cafe_step import run_cafe_step_bench

    out = run_cafe_step_bench(args.data, args.batch_size, args.ratio, args.device, args.repeats)
    for r in out["records"]:
        parts = ", ".join(f"{p} {r[f'{p}_ids_per_s'] / 1e6:,.1f} M ids/s ({r[f'{p}_over_h200']:.2f}x)"
                          for p in ("keys", "lookup", "scoring", "insert_numba", "insert_tensor")
                          if f"{p}_ids_per_s" in r)
        print(f"batch {r['batch_size']:>7,}: {parts}; one H200 brings {r['h200_ids_per_s'] / 1e6:,.1f} M ids/s",
              file=sys.stderr)
    return _emit(out, args.output_json)


def _gpu_batches(p: argparse.ArgumentParser, data: str, per: str) -> None:
    """--data and --batch-size as the GPU-scale benches take them."""
    p.add_argument("--data", required=True, help=f"a converted dataset directory ({data})")
    p.add_argument("--batch-size", type=lambda t: csv_list(t, int), default=[8192, 65536], metavar="N[,N...]",
                   help=f"rows {per} (default 8192,65536)")


def _cafe_step_parser(bsub: argparse._SubParsersAction) -> None:
    bc = bsub.add_parser("cafe-step", help="CAFE's per-step work (keys, hot-map lookup, scoring, sketch insert) "
                                           "at GPU batch sizes, beside one H200's rate")
    _gpu_batches(bc, "its features and first rows", "per step")
    bc.add_argument("--ratio", type=float, default=100.0, help="CAFE's compression ratio (sets the hot slots)")
    bc.add_argument("--device", default="cpu", help="cpu (one torch thread) or cuda")
    bc.add_argument("--repeats", type=lambda t: max(1, int(t)), default=5, help="timed repeats; medians reported")
    _common(bc)
    bc.set_defaults(handler=_cafe_step)


def _input_parser(bsub: argparse._SubParsersAction) -> None:
    bi = bsub.add_parser("input", help="rows/s per worker through the trainer's input path beside pyarrow's, "
                                       "per core, resumed and per-worker bytes")
    _gpu_batches(bi, "its train split is read", "per worker per step")
    bi.add_argument("--num-workers", type=int, default=1, help="Ray Train workers reading side by side")
    bi.add_argument("--rows", type=int, default=None, help="read only the first N train rows (default: all)")
    bi.add_argument("--repeats", type=lambda t: max(1, int(t)), default=3, help="rounds; medians reported")
    bi.add_argument("--ray-data", action="store_true",
                    help="also time Ray Data's iter_batches + the Collator (the path before row-addressed reads)")
    bi.add_argument("--use-gpu", action="store_true", help="workers on GPUs: the batches are copied there (pinned)")
    _common(bi, storage=True)
    bi.set_defaults(handler=_input)


def _conversion_parser(bsub: argparse._SubParsersAction) -> None:
    bc = bsub.add_parser("conversion", help="conversion rows/s on one core beside pyarrow's CSV reader, same file")
    bc.add_argument("--input", nargs="+", required=True, metavar="FILE", help="raw Criteo TSV file(s) to convert")
    bc.add_argument("--format", default="criteo", help="a click-log format (criteo, avazu, libsvm)")
    bc.add_argument("--repeats", type=lambda t: max(1, int(t)), default=3, help="alternating rounds; medians reported")
    _common(bc)
    bc.set_defaults(handler=_conversion)


def _common(p: argparse.ArgumentParser, *, storage: bool = False, overrides: bool = False) -> None:
    """The flags benchmarks share: where runs go, overrides for every run, the JSON report."""
    if storage:
        p.add_argument("--storage-path", default="runs/bench", help="where the runs' checkpoints go")
    if overrides:
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    output_json(p, "the report")


def _quality_parser(bsub: argparse._SubParsersAction) -> None:
    bq = bsub.add_parser("quality", help="test AUC/logloss versus compression ratio, every method, same data")
    bq.add_argument("--data", help="converted dataset directory, or a Criteo TSV file")
    bq.add_argument("--merge", type=csv_list, metavar="A.json,B.json",
                    help="train nothing: pool the runs of earlier reports (e.g. one process per seed) into one")
    bq.add_argument("--methods", type=csv_list, metavar="M1,M2",
                    help="compressed methods (default: all; full runs too, as the baseline, unless --skip-full)")
    bq.add_argument("--ratios", type=lambda t: csv_list(t, float), default=[10, 100, 1000, 10000], metavar="R1,R2",
                    help="compression ratios (default 10,100,1000,10000)")
    bq.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per run (default 1)")
    bq.add_argument("--batch-size", type=int, default=256, help="rows per worker per step (default 256)")
    bq.add_argument("--seeds", type=lambda t: csv_list(t, int), metavar="S1,S2",
                    help="run every cell once per seed; the report gives mean ± sd and the paired gap to cafe")
    bq.add_argument("--seed", type=int, default=0, help="one seed (when --seeds is not given)")
    bq.add_argument("--rows", type=int, help="only the first N rows of the data (a quick run)")
    bq.add_argument("--skip-full", action="store_true",
                    help="do not run the full baseline (another report, pooled with --merge, has it)")
    bq.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    bq.add_argument("--plot", metavar="PATH", help="write AUC versus ratio (PNG)")
    _common(bq, storage=True, overrides=True)
    bq.set_defaults(handler=_quality)


def _throughput_parser(bsub: argparse._SubParsersAction) -> None:
    bt = bsub.add_parser("throughput", help="training samples/s per method, as ratios to full and hash")
    bt.add_argument("--methods", type=csv_list, metavar="M1,M2", help="default: every method")
    bt.add_argument("--num-workers", type=lambda t: csv_list(t, int), default=[1, 2], metavar="N1,N2",
                    help="worker counts to measure (default 1,2)")
    bt.add_argument("--ratio", type=float, default=100.0, help="compression ratio of every method but full")
    bt.add_argument("--steps", type=int, default=120, help="training steps per run (default 120)")
    bt.add_argument("--repeats", type=lambda t: max(1, int(t)), default=1,
                    help="rounds of every method in turn; report the median round (ratios paired within a round)")
    bt.add_argument("--batch-size", type=int, default=1024, help="rows per worker per step (default 1024)")
    bt.add_argument("--data", help="dataset directory or Criteo TSV (default: synthetic, generated once)")
    _common(bt, storage=True, overrides=True)
    bt.set_defaults(handler=_throughput)


def _sketch_parser(bsub: argparse._SubParsersAction) -> None:
    bs = bsub.add_parser("sketch", help="HotSketch insert throughput, recall and precision")
    for flag, default, help_ in (
            ("--num-ids", 20_000_000, "ids inserted"), ("--distinct", 10_000_000, "distinct ids among them"),
            ("--hot-slots", 100_000, "the hot set's size"), ("--batch", 4096, "ids per insert"),
            ("--buckets", 100_000, "sketch buckets"), ("--recall-k", 10_000, "true top ids recall is measured on"),
            ("--precision-k", 100_000, "reported ids precision is measured on"), ("--seed", 0, "the stream's seed")):
        bs.add_argument(flag, type=int, default=default, help=f"{help_} (default {default:,})")
    bs.add_argument("--threshold", type=float, default=50.0, help="admission score (default 50)")
    bs.add_argument("--path", choices=["numba", "tensor"], default="numba",
                    help="the sketch's numba kernel (default) or its tensor path")
    _common(bs)
    bs.set_defaults(handler=_sketch)


def _serving_parser(bsub: argparse._SubParsersAction) -> None:
    bv = bsub.add_parser("serving", help="exported model bytes (fp32, int8), their AUC and scoring rows/s per method")
    bv.add_argument("--data", required=True, help="converted dataset directory, or a Criteo TSV file")
    bv.add_argument("--methods", type=csv_list, metavar="M1,M2", help="default: all (full always runs, as the baseline)")
    bv.add_argument("--ratio", type=float, default=100, help="compression ratio of the served models (default 100)")
    bv.add_argument("--batch-size", type=int, default=4096, help="scoring batch")
    bv.add_argument("--rows", type=int, help="only the first N rows of the data (a quick run)")
    bv.add_argument("--markdown", metavar="PATH", help="also write the table as Markdown")
    _common(bv, storage=True)
    bv.set_defaults(handler=_serving)


def _coordinator_parser(bsub: argparse._SubParsersAction) -> None:
    bc = bsub.add_parser("coordinator", help="hot-set exchange at 8/64/256 simulated workers: merge, store, latency")
    bc.add_argument("--workers", type=lambda t: csv_list(t, int), default=[8, 64, 256], metavar="N1,N2",
                    help="simulated worker counts (default 8,64,256)")
    bc.add_argument("--slots", type=int, default=100_000, help="hot slots")
    bc.add_argument("--candidates-per-worker", type=int, help="default: cafe's summary_factor (2) x slots / workers")
    bc.add_argument("--rounds", type=int, default=12, help="hot-set rounds per worker count (default 12)")
    bc.add_argument("--no-store", action="store_true", help="without the actor's write-ahead state (what it costs)")
    bc.add_argument("--sync-interval", type=int, default=20, help="the verdict's cafe.sync_interval")
    bc.add_argument("--sync-lag", type=int, default=2, help="the verdict's cafe.sync_lag")
    bc.add_argument("--address", help="a Ray cluster (default: a local one)")
    _common(bc)
    bc.set_defaults(handler=_coordinator)


def _drift_parser(bsub: argparse._SubParsersAction) -> None:
    bd = bsub.add_parser("drift", help="CAFE vs hashing at equal memory on drifting synthetic data")
    bd.add_argument("--rows", type=int, default=1_000_000, help="rows of the drifting stream")
    bd.add_argument("--cardinality-scale", type=float, default=0.01,
                    help="multiplies Criteo Kaggle's cardinalities")
    bd.add_argument("--drift-period", type=int, default=200_000, help="rows between rotations of the popular ids")
    bd.add_argument("--ratio", type=float, default=100.0, help="compression ratio (default 100)")
    bd.add_argument("--methods", nargs="+", default=["hash", "cafe"], help="methods to compare (default hash cafe)")
    bd.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per run (default 1)")
    bd.add_argument("--data-dir", default="data/synth_drift", help="where the stream is generated")
    _common(bd, overrides=True)
    bd.set_defaults(handler=_drift)


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks (results belong in BENCHMARKS.md)")
    bsub = b.add_subparsers(dest="bench", required=True)
    for add in (_quality_parser, _throughput_parser, _sketch_parser, _serving_parser, _coordinator_parser,
                _drift_parser, _conversion_parser, _input_parser, _cafe_step_parser):
        add(bsub)
