"""``cafe-dist`` command line: data conversion/generation, training, sweeps, run comparison, jobs on
a Ray cluster and benchmarks."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cafe_dist.checkpoint import CheckpointError
from cafe_dist.config import ConfigError, load_config
from cafe_dist.errors import USER_ERRORS, os_error_message


def _summary(meta, out: str) -> None:
    print(f"wrote {out}: train {meta.rows['train']:,} rows, test {meta.rows['test']:,} rows, "
          f"{len(meta.sparse_features)} categorical / {len(meta.dense_features)} dense features")
    if meta.rows["test"] == 0:
        print("no test split (--test-fraction 0): training on this dataset cannot evaluate; convert with "
              "--test-fraction above 0 for a run that reports AUC", file=sys.stderr)
    if meta.bad_rows:
        print(f"{meta.bad_rows:,} malformed lines skipped; line numbers and reasons in {out}/bad_rows.tsv",
              file=sys.stderr)


def cmd_data(args: argparse.Namespace) -> int:
    if args.format in ("fit-profile", "signatures"):
        return {"fit-profile": _fit_profile, "signatures": _signatures}[args.format](args)
    if args.format == "criteo" and args.address:
        from cafe_dist.data.distributed import convert_criteo_distributed

        meta = convert_criteo_distributed(args.input, args.out, test_fraction=args.test_fraction,
                                          min_count=args.min_count, address=args.address, overwrite=args.overwrite)
    elif args.format == "synth":
        from cafe_dist.data.synth import SynthSpec, generate_synthetic

        spec = SynthSpec(rows=args.rows, seed=args.seed, cardinality_scale=args.cardinality_scale,
                         zipf_a=args.zipf_a, drift_period=args.drift_period,
                         drift_fraction=args.drift_fraction, profile=args.profile)
        meta = generate_synthetic(args.out, spec, test_fraction=args.test_fraction, overwrite=args.overwrite)
    else:  # a click-log format plugin (cafe_dist.data.formats)
        from cafe_dist.data.formats import FORMATS, CsvSpec

        fmt = FORMATS[args.format](CsvSpec.load(args.spec)) if args.format == "csv" else FORMATS[args.format]()
        meta = fmt.convert(args.input, args.out, test_fraction=args.test_fraction, min_count=args.min_count,
                           overwrite=args.overwrite)
    _summary(meta, args.out)
    return 0


def _fit_profile(args: argparse.Namespace) -> int:
    """Fit a generator profile from a real Criteo file (see cafe_dist.data.profile)."""
    import tempfile
    from pathlib import Path

    from cafe_dist.data.formats.criteo import convert_criteo
    from cafe_dist.data.profile import fit_profile
    from cafe_dist.data.schema import CRITEO_KAGGLE_CARDINALITIES

    with tempfile.TemporaryDirectory() as tmp:
        convert_criteo(args.input, Path(tmp, "sample"), test_fraction=0.0, progress=True)
        profile = fit_profile(Path(tmp, "sample"), CRITEO_KAGGLE_CARDINALITIES, args.name,
                              ", ".join(Path(p).name for p in args.input))
    profile.save(args.out)
    for c in profile.categorical:
        o = c.observed
        logging.getLogger("cafe_dist").info(
            "%s: %s distinct of %s, top %.3f, slope %.2f, missing %.3f -> %s", c.name, f"{o['distinct']:,}",
            f"{c.cardinality:,}", o["top_share"], o["loglog_slope"], c.missing_rate,
            "the sample's own shares" if c.empirical is not None else f"a={c.a:.3f} q={c.q:.2f}")
    print(f"wrote {args.out}: {len(profile.categorical)} categorical, {len(profile.dense)} dense features, "
          f"click rate {profile.click_rate:.4f}, from {profile.rows:,} rows")
    return 0


def _signatures(args: argparse.Namespace) -> int:
    """LMA's co-occurrence signatures of a converted dataset (see cafe_dist.embeddings.lma)."""
    from cafe_dist.data import storage
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.embeddings.lma import write_signatures

    data_dir = storage.resolve(args.dir)
    path = write_signatures(data_dir, DatasetMeta.load(data_dir), args.sample_rows, args.seed, args.min_count,
                            address=args.address)
    print(f"wrote {path}; an lma run with lma.sample_rows={args.sample_rows}, lma.seed={args.seed} and "
          f"lma.min_count={args.min_count} reads it")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from cafe_dist.demo import run_demo

    run_demo(args.config, _overrides(args, {"ray.num_workers": args.num_workers, "ray.verbose": args.verbose or None}),
             args.ratio, args.output_json)
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from cafe_dist.data import storage
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.outputs import write_text
    from cafe_dist.plan import Topo, plan_job, profile_meta, render

    job = load_config(args.config, list(args.set or []))
    profile = args.profile
    if not profile and storage.is_file(storage.join(job.data.path, "meta.json")):
        meta, source = DatasetMeta.load(job.data.path), job.data.path
    elif profile or (profile := job.data.profile):
        meta, source = profile_meta(profile), f"the {profile} profile"
    else:
        raise ConfigError(f"{job.data.path} holds no dataset here (no meta.json): plan for a profile's published "
                          "cardinalities with --profile criteo-tb (or criteo-kaggle), or set data.profile")
    topo = Topo(args.world_size if args.world_size is not None else job.ray.num_workers, args.gpus_per_node,
                args.hbm_gb, "cuda" if job.ray.use_gpu else "cpu")
    ratios = args.ratios or [1.0, 10.0, 100.0, 1000.0]
    if any(r < 1 for r in ratios):
        raise ConfigError(f"--ratios: every compression ratio must be at least 1, got {', '.join(map(str, ratios))}")
    plans = plan_job(job, meta, topo, ratios, find_min=not args.no_min)
    print(render(plans, topo, f"{args.config} ({source}, {job.embedding.method}, dim {job.embedding.dim})",
                 find_min=not args.no_min))
    if args.output_json:
        write_text(args.output_json, json.dumps({"config": args.config, "source": source, "topology": topo.__dict__,
                                                 "plans": [p.to_json() for p in plans]}, indent=1))
    return 0 if all(p.fits for p in plans) else 1


def cmd_hot(args: argparse.Namespace) -> int:
    from cafe_dist.serving.hot import describe_hot

    print(describe_hot(args.checkpoint or _run_checkpoint(args.run), args.top))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from cafe_dist.serving.export import export_checkpoint

    checkpoint = args.checkpoint or _run_checkpoint(args.run)
    doc = export_checkpoint(checkpoint, args.out, quantize=args.quantize)
    b = doc["bytes"]
    print(f"wrote {args.out}: {doc['method']} at {doc['compression_ratio']:g}x"
          f"{' (int8 tables)' if args.quantize else ''}, step {doc['source']['step']}; embeddings "
          f"{b['embeddings']:,} bytes (tables {b['tables']:,}, method state {b['method_state']:,}; training held "
          f"{b['training_embedding_bytes']:,}), dense {b['dense']:,}, vocabulary {b['vocab']:,}")
    return 0


def _run_checkpoint(run_id: str) -> str:
    """The checkpoint an MLflow run finished with (from its result.json)."""
    from mlflow.exceptions import MlflowException

    from cafe_dist.mlflow_store import finished_run

    _, client = finished_run(run_id)  # unknown or not FINISHED: said so
    try:
        with open(client.download_artifacts(run_id, "result.json", _scratch())) as f:
            result = json.load(f)
    except (MlflowException, OSError, ValueError):  # no result.json: a run from before checkpoints recorded it
        result = {}
    if not result.get("checkpoint_path"):
        raise ConfigError(f"MLflow run {run_id} recorded no checkpoint; export with --checkpoint RUN_DIR")
    return result["checkpoint_path"]


def _scratch() -> str:
    """A temporary folder removed when the command ends (MLflow downloads land here, not in /tmp for good)."""
    import atexit
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="cafe-dist-")
    atexit.register(shutil.rmtree, d, True)
    return d


def _load_model(location: str):
    from cafe_dist.serving.model import ServedModel
    from cafe_dist.serving.pyfunc import resolve_model

    return ServedModel.load(resolve_model(location, _scratch()))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cafe_dist.outputs import check_file, write_text
    from cafe_dist.serving.scoring import evaluate

    if args.output_json:  # before the model loads and the rows are scored, not after
        check_file(args.output_json, flag="--output-json", overwrite=args.overwrite, inputs=[args.input])
    out = evaluate(_load_model(args.model), args.input, split=args.split, batch_size=args.batch_size)
    print(f"{args.input}: AUC {out['auc']:.4f}, logloss {out['logloss']:.4f} over {out['rows']:,} rows "
          f"({out['rows_per_s']:,.0f} rows/s)")
    if args.output_json:
        write_text(args.output_json, json.dumps(out, indent=2) + "\n")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from cafe_dist.outputs import check_file
    from cafe_dist.serving.scoring import bad_rows_path, predict

    check_file(args.out, flag="--out", overwrite=args.overwrite, inputs=[args.input])
    check_file(bad_rows_path(args.out), flag="--out's list of malformed lines", inputs=[args.input])
    out = predict(_load_model(args.model), args.input, args.out, split=args.split, batch_size=args.batch_size)
    print(f"wrote {out['out']}: {out['rows']:,} scores ({out['rows_per_s']:,.0f} rows/s)"
          + (f"; {out['bad_rows']:,} malformed line(s) skipped, listed in {out['bad_rows_file']}"
             if out["bad_rows"] else ""))
    return 0


def _overrides(args: argparse.Namespace, flags: dict[str, object]) -> list[str]:
    """``--set`` assignments, then the dedicated flags that were given (config key → value)."""
    return list(args.set or []) + [f"{key}={value}" for key, value in flags.items() if value is not None]


def cmd_train(args: argparse.Namespace) -> int:
    job = load_config(args.config, _overrides(args, {"ray.num_workers": args.num_workers,
                                                     "ray.address": args.address, "ray.resume": args.resume,
                                                     "ray.verbose": args.verbose or None}))
    from cafe_dist.train.launcher import run_training

    out = run_training(job, args.output_json)
    if not args.output_json:  # the result on stdout, for scripts
        print(json.dumps(out.to_dict(), indent=2))
        return 0
    log = logging.getLogger("cafe_dist")
    log.info("result: test auc %.4f, logloss %.4f; embeddings %.2f MB (compression %.1fx); %s samples/s; "
             "full result in %s", out.auc, out.logloss, out.embedding_bytes / 1e6, out.compression_ratio,
             f"{out.samples_per_sec:,.0f}", args.output_json)
    if out.mlflow_run_id:
        from cafe_dist.mlflow_store import resolve_uri

        uri = resolve_uri(job.mlflow.tracking_uri)
        log.info("MLflow run %s (browse: mlflow ui --backend-store-uri %s)", out.mlflow_run_id, uri)
    return 0


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _key_value(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. sweep=grid), got {text!r}")
    return key, value


def _csv(text: str, kind=str) -> list:
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None


def cmd_compare(args: argparse.Namespace) -> int:
    from cafe_dist.compare import collect_runs, format_table, plot_auc_vs_ratio, runs_elsewhere, to_json

    tags = dict(args.tag or [])
    experiment = None if args.all_experiments else args.experiment
    rows = collect_runs(args.tracking_uri, experiment, tags=tags)
    where = "every experiment" if experiment is None else f"experiment {experiment!r}"
    if args.format == "json":
        print(to_json(rows))
    else:
        print(format_table(rows, markdown=args.format == "markdown") if rows else
              f"no runs in {where}" + (f" with tags {tags}" if tags else ""))
        if experiment is not None and (others := runs_elsewhere(args.tracking_uri, experiment)):
            print(f"showing {where}; runs also in " + ", ".join(f"{n!r} ({k})" for n, k in others.items())
                  + ": --experiment NAME or --all-experiments", file=sys.stderr)
    if args.plot:
        n = plot_auc_vs_ratio(rows, args.plot, title=f"{experiment or 'all experiments'}: AUC versus compression")
        print(f"plot: {args.plot} ({n} points)", file=sys.stderr)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    job = load_config(args.config, _overrides(args, {"ray.num_workers": args.num_workers, "sweep.name": args.name,
                                                     "ray.resume": args.resume, "ray.verbose": args.verbose or None}))
    from cafe_dist.sweep import run_sweep

    out = run_sweep(job, args.methods, args.ratios, plot=args.plot, output_json=args.output_json)
    return 1 if out["failed"] else 0


def cmd_submit(args: argparse.Namespace) -> int:
    from cafe_dist import submit as jobs

    env = dict(args.env or [])
    job_id = jobs.submit(args.job, args.address, args.num_workers, args.set, env, tracking_uri=args.tracking_uri,
                         submission_id=args.job_id)
    print(f"submitted {job_id} to {jobs.address_or_default(args.address)}", file=sys.stderr, flush=True)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    final = jobs.follow(job_id, args.address)
    print(f"job {job_id}: {final}", file=sys.stderr)
    return jobs.EXIT_CODES.get(final, 1)


def cmd_jobs(args: argparse.Namespace) -> int:
    """status / logs / stop of submitted jobs."""
    from cafe_dist import submit as jobs

    if args.command == "status":
        info = jobs.status(args.job_id, args.address) if args.job_id else jobs.list_jobs(args.address)
        print(json.dumps(info, indent=2, default=str))
    elif args.command == "logs":
        if args.follow:
            final = jobs.follow(args.job_id, args.address)
            print(f"job {args.job_id}: {final}", file=sys.stderr)
        else:
            sys.stdout.write(jobs.logs(args.job_id, args.address))
    else:
        final = jobs.stop(args.job_id, args.address)
        print(f"job {args.job_id}: {final}")
        return 0 if final in ("STOPPED", "SUCCEEDED", "FAILED") else 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.bench == "quality":
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
    if args.bench == "throughput":
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
    if args.bench == "serving":
        from cafe_dist.bench.serving import ServingSpec, run_serving_bench
        from cafe_dist.embeddings.registry import REGISTRY

        run_serving_bench(ServingSpec(data=args.data, methods=tuple(args.methods or REGISTRY), ratio=args.ratio,
                                      batch_size=args.batch_size, rows=args.rows, storage_path=args.storage_path),
                          output_json=args.output_json, markdown=args.markdown)
        return 0
    if args.bench == "coordinator":
        from cafe_dist.bench.coordinator import CoordinatorBenchSpec, run_coordinator_bench

        out = run_coordinator_bench(CoordinatorBenchSpec(
            workers=tuple(args.workers), slots=args.slots, candidates_per_worker=args.candidates_per_worker,
            rounds=args.rounds, store=not args.no_store, sync_interval=args.sync_interval, sync_lag=args.sync_lag),
            output_json=args.output_json, address=args.address)
        print(out["markdown"])
        return 0
    if args.bench == "drift":
        from cafe_dist.bench.drift import DriftBenchSpec, run_drift_bench

        out = run_drift_bench(DriftBenchSpec(
            rows=args.rows, cardinality_scale=args.cardinality_scale, drift_period=args.drift_period,
            ratio=args.ratio, methods=tuple(args.methods), num_workers=args.num_workers,
            data_dir=args.data_dir, extra=tuple(args.set or ())))
        for m, r in out["runs"].items():
            rec = " ".join(f"{s['min']:.2f}→{s['last']:.2f}" for s in r.get("recovery", []))
            print(f"{m:8s} auc {r['auc']:.4f} logloss {r['logloss']:.4f} ratio {r['compression_ratio']:.1f}"
                  + (f"  hot top-ids per period (min→last): {rec}" if rec else ""), file=sys.stderr)
    else:
        from cafe_dist.bench.sketch import SketchBenchSpec, run_sketch_bench

        out = run_sketch_bench(SketchBenchSpec(
            num_ids=args.num_ids, distinct=args.distinct, hot_slots=args.hot_slots, threshold=args.threshold,
            batch=args.batch, buckets=args.buckets, recall_k=args.recall_k, precision_k=args.precision_k,
            seed=args.seed, path=args.path))
    text = json.dumps(out, indent=2)
    if args.output_json:
        from cafe_dist.outputs import write_text

        write_text(args.output_json, text + "\n")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cafe-dist", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="convert click logs to Parquet, or generate synthetic data")
    dsub = data.add_subparsers(dest="format", required=True)
    for fmt, help_ in (("criteo", "Criteo Kaggle / CriteoTB TSV (.gz ok)"), ("avazu", "Avazu CSV"),
                       ("csv", "any delimited click log, described by --spec SPEC.yaml (see cafe_dist/data/formats/csv.py)"),
                       ("libsvm", "libsvm / libfm lines (label idx:val ...; the k-th pair is field k) or libffm "
                                  "(label field:idx:val ...)")):
        d = dsub.add_parser(fmt, help=help_)
        d.add_argument("--input", nargs="+", required=True, metavar="FILE")
        if fmt == "csv":
            d.add_argument("--spec", required=True, metavar="SPEC.yaml",
                           help="delimiter, header, label, categorical, dense and time columns")
        d.add_argument("--out", required=True, metavar="DIR")
        d.add_argument("--test-fraction", type=float, default=1 / 7,
                       help="last fraction of rows used as test split (default 1/7, as in CAFE)")
        d.add_argument("--min-count", type=int, default=1,
                       help="train-split occurrences a value needs for its own contiguous id")
        if fmt == "criteo":
            d.add_argument("--address", help="convert as a distributed Ray Data job on this Ray cluster "
                                             "(ray://HEAD:10001, auto, or 'local'); --out must be shared storage")
    s = dsub.add_parser("synth", help="Criteo-shaped synthetic data with skew and drift")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--rows", type=_positive, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--cardinality-scale", type=float, default=0.01,
                   help="multiplies Criteo Kaggle's per-feature cardinalities")
    s.add_argument("--zipf-a", type=float, default=1.1)
    s.add_argument("--drift-period", type=int, default=0, help="rows between rotations (0: rows/4)")
    s.add_argument("--drift-fraction", type=float, default=0.05)
    s.add_argument("--test-fraction", type=float, default=1 / 7)
    s.add_argument("--profile", help="a fitted feature profile: criteo-kaggle (Criteo Kaggle's 26 features at full "
                                     "cardinality, fitted on the real 0.3 %% sample), criteo-tb, or a JSON file; "
                                     "--cardinality-scale and --zipf-a are then unused")
    fp = dsub.add_parser("fit-profile", help="fit a generator profile from a real Criteo TSV sample")
    fp.add_argument("--input", nargs="+", required=True, metavar="FILE")
    fp.add_argument("--out", required=True, metavar="JSON",
                    help="e.g. cafe_dist/data/profiles/criteo_kaggle.json (the shipped one)")
    fp.add_argument("--name", default="criteo-kaggle")
    sg = dsub.add_parser("signatures", help="LMA's min-hash signatures of a converted dataset's values")
    sg.add_argument("dir", metavar="DIR", help="a converted dataset (local path or URI); written to DIR/lma/")
    sg.add_argument("--sample-rows", type=_positive, default=125_000,
                    help="train rows drawn uniformly to define each value's row set (the authors use 125,000)")
    sg.add_argument("--min-count", type=_positive, default=2, help="sampled rows a value needs for a signature")
    sg.add_argument("--seed", type=int, default=0, help="the row sample and the min-hash functions")
    sg.add_argument("--address", help="read the sample as a Ray Data job on this cluster (ray://HEAD:10001, "
                                      "auto, or 'local'); the same sample as without")
    for d in (*(dsub.choices[f] for f in ("criteo", "avazu", "csv", "libsvm")), s):
        d.add_argument("--overwrite", action="store_true",
                       help="replace the dataset already in --out (only once the new one is complete)")

    t = sub.add_parser("train", help="train DLRM on Ray Train + TorchRec")
    t.add_argument("--config", required=True, metavar="FILE")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    t.add_argument("--num-workers", type=int)
    t.add_argument("--address", help="Ray cluster address (default: start a local cluster)")
    t.add_argument("--output-json", metavar="PATH")
    c = sub.add_parser("compare", help="table of tracked runs (MLflow), optional AUC-vs-ratio plot")
    c.add_argument("--experiment", default="cafe-dist", help="MLflow experiment (default cafe-dist)")
    c.add_argument("--all-experiments", action="store_true", help="the runs of every experiment")
    c.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    c.add_argument("--tag", action="append", type=_key_value, metavar="KEY=VALUE", help="only runs with this tag, e.g. sweep=NAME")
    c.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    c.add_argument("--plot", metavar="PATH", help="write AUC versus compression ratio per method (PNG)")
    sw = sub.add_parser("sweep", help="train every (method, ratio) of a grid, each a tracked run; then compare")
    sw.add_argument("--config", required=True, metavar="FILE")
    sw.add_argument("--methods", type=_csv, metavar="M1,M2", help="default: the job's sweep.methods")
    sw.add_argument("--ratios", type=lambda t: _csv(t, float), metavar="R1,R2",
                    help="default: the job's sweep.ratios")
    sw.add_argument("--name", help="sweep name (MLflow tag sweep=NAME); default sweep-<timestamp>")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key for every run")
    sw.add_argument("--num-workers", type=int)
    sw.add_argument("--plot", metavar="PATH", help="default: <ray.storage_path>/<name>/auc_vs_ratio.png")
    sw.add_argument("--output-json", metavar="PATH")
    for parser in (t, sw):
        parser.add_argument("--verbose", action="store_true",
                            help="also show Ray's, TorchRec's and fbgemm's own logs and warnings (ray.verbose)")
        parser.add_argument("--resume", choices=["auto", "force"],
                            help="a named run resumes its checkpoint only if made with the same settings "
                                 "(auto, the default); force continues it after train.* settings changed")
    sj = sub.add_parser("submit", help="submit a training job to a Ray cluster (Ray Jobs API)")
    sj.add_argument("job", metavar="JOB.yaml", help="job spec under the working directory (uploaded with it)")
    sj.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS, else http://127.0.0.1:8265)")
    sj.add_argument("--num-workers", type=int)
    sj.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    sj.add_argument("--env", action="append", type=_key_value, metavar="KEY=VALUE", help="environment variable for the job")
    sj.add_argument("--tracking-uri", help="MLflow store the job logs to (default $MLFLOW_TRACKING_URI, "
                                           "else the job's mlflow.tracking_uri)")
    sj.add_argument("--job-id", help="submission id (default: Ray picks one)")
    sj.add_argument("--wait", action="store_true", help="stream the logs and exit with the job's status")
    for name, help_ in (("status", "a job's status (all jobs without JOB_ID)"), ("logs", "a job's logs"),
                        ("stop", "stop a running job")):
        j = sub.add_parser(name, help=help_)
        j.add_argument("job_id", metavar="JOB_ID", nargs="?" if name == "status" else None)
        j.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS or http://127.0.0.1:8265)")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends")
    pl = sub.add_parser("plan", help="the sharding plan and per-rank memory of a job on N devices (none needed here)")
    pl.add_argument("--config", required=True, metavar="FILE")
    pl.add_argument("--world-size", type=_positive, help="devices (default: the job's ray.num_workers)")
    pl.add_argument("--gpus-per-node", type=_positive, default=8, help="devices per node (default 8)")
    pl.add_argument("--hbm-gb", type=_positive_float, default=80.0,
                    help="memory per device in GiB (HBM for GPU jobs, RAM per worker for CPU jobs)")
    pl.add_argument("--ratios", type=lambda t: _csv(t, float), metavar="R1,R2", help="default 1,10,100,1000")
    pl.add_argument("--profile", choices=["criteo-kaggle", "criteo-tb"],
                    help="plan for a profile's published cardinalities instead of the job's dataset")
    pl.add_argument("--no-min", action="store_true", help="skip the search for the smallest world size")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    pl.add_argument("--output-json", metavar="PATH")
    ht = sub.add_parser("hot", help="CAFE's hot ids per feature (raw values, scores) from a run's checkpoint")
    hsrc = ht.add_mutually_exclusive_group(required=True)
    hsrc.add_argument("--checkpoint", metavar="PATH", help="a checkpoint, or a run directory (its newest one)")
    hsrc.add_argument("--run", metavar="RUN_ID", help="an MLflow run (the checkpoint it finished with)")
    ht.add_argument("--top", type=int, default=20, help="ids per feature (strongest first)")
    dm = sub.add_parser("demo", help="CAFE and hashing at the same memory, the CAFE model exported and scoring")
    dm.add_argument("--config", default="jobs/demo.yaml", metavar="FILE")
    dm.add_argument("--ratio", type=float, default=100)
    dm.add_argument("--num-workers", type=int)
    dm.add_argument("--set", action="append", metavar="KEY=VALUE")
    dm.add_argument("--verbose", action="store_true")
    dm.add_argument("--output-json", metavar="PATH")
    ex = sub.add_parser("export", help="a run's model as a self-contained directory (no Ray, no DMP)")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint, or a run directory (its newest one)")
    src.add_argument("--run", metavar="RUN_ID", help="an MLflow run (the checkpoint it finished with)")
    ex.add_argument("--out", required=True, metavar="DIR", help="a new directory")
    ex.add_argument("--quantize", choices=["int8"], help="tables row-wise int8 (fp16 scale and bias per row)")
    for name, help_ in (("evaluate", "AUC and logloss of a trained model on labelled rows"),
                        ("predict", "click probabilities of a trained model for every row")):
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--model", required=True, metavar="DIR|runs:/ID/model|models:/NAME/VERSION")
        sp.add_argument("--input", required=True, metavar="FILE_OR_DATASET",
                        help="a raw Criteo TSV (.gz ok) / Avazu CSV, or a converted dataset (its --split)")
        sp.add_argument("--split", default="test", help="of a converted dataset (default: test)")
        sp.add_argument("--batch-size", type=_positive, default=4096)
        if name == "evaluate":
            sp.add_argument("--output-json", metavar="PATH")
        else:
            sp.add_argument("--out", required=True, metavar="PARQUET", help="score (and label) per row")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (never the input)")
    b = sub.add_parser("bench", help="benchmarks (results belong in BENCHMARKS.md)")
    bsub = b.add_subparsers(dest="bench", required=True)
    bq = bsub.add_parser("quality", help="test AUC/logloss versus compression ratio, every method, same data")
    bq.add_argument("--data", help="converted dataset directory, or a Criteo TSV file")
    bq.add_argument("--merge", type=_csv, metavar="A.json,B.json",
                    help="train nothing: pool the runs of earlier reports (e.g. one process per seed) into one")
    bq.add_argument("--methods", type=_csv, metavar="M1,M2",
                    help="compressed methods (default: all; full runs too, as the baseline, unless --skip-full)")
    bq.add_argument("--ratios", type=lambda t: _csv(t, float), default=[10, 100, 1000, 10000], metavar="R1,R2")
    bq.add_argument("--num-workers", type=int, default=1)
    bq.add_argument("--batch-size", type=int, default=256)
    bq.add_argument("--seeds", type=lambda t: _csv(t, int), metavar="S1,S2",
                    help="run every cell once per seed; the report gives mean ± sd and the paired gap to cafe")
    bq.add_argument("--seed", type=int, default=0, help="one seed (when --seeds is not given)")
    bq.add_argument("--rows", type=int, help="only the first N rows of the data (a quick run)")
    bq.add_argument("--skip-full", action="store_true",
                    help="do not run the full baseline (another report, pooled with --merge, has it)")
    bq.add_argument("--storage-path", default="runs/bench")
    bq.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    bq.add_argument("--markdown", metavar="PATH", help="write the tables as markdown")
    bq.add_argument("--plot", metavar="PATH", help="write AUC versus ratio (PNG)")
    bq.add_argument("--output-json", metavar="PATH")
    bt = bsub.add_parser("throughput", help="training samples/s per method, as ratios to full and hash")
    bt.add_argument("--methods", type=_csv, metavar="M1,M2", help="default: every method")
    bt.add_argument("--num-workers", type=lambda t: _csv(t, int), default=[1, 2], metavar="N1,N2")
    bt.add_argument("--ratio", type=float, default=100.0, help="compression ratio of every method but full")
    bt.add_argument("--steps", type=int, default=120)
    bt.add_argument("--repeats", type=lambda t: max(1, int(t)), default=1,
                    help="rounds of every method in turn; report the median round (ratios paired within a round)")
    bt.add_argument("--batch-size", type=int, default=1024)
    bt.add_argument("--data", help="dataset directory or Criteo TSV (default: synthetic, generated once)")
    bt.add_argument("--storage-path", default="runs/bench")
    bt.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    bt.add_argument("--output-json", metavar="PATH")
    bs = bsub.add_parser("sketch", help="HotSketch insert throughput, recall and precision")
    bs.add_argument("--num-ids", type=int, default=20_000_000)
    bs.add_argument("--distinct", type=int, default=10_000_000)
    bs.add_argument("--hot-slots", type=int, default=100_000)
    bs.add_argument("--threshold", type=float, default=50.0)
    bs.add_argument("--batch", type=int, default=4096)
    bs.add_argument("--buckets", type=int, default=100_000)
    bs.add_argument("--recall-k", type=int, default=10_000)
    bs.add_argument("--precision-k", type=int, default=100_000)
    bs.add_argument("--seed", type=int, default=0)
    bs.add_argument("--path", choices=["numba", "tensor"], default="numba")
    bs.add_argument("--output-json", metavar="PATH")
    bv = bsub.add_parser("serving", help="exported model bytes (fp32, int8), their AUC and scoring rows/s per method")
    bv.add_argument("--data", required=True, help="converted dataset directory, or a Criteo TSV file")
    bv.add_argument("--methods", type=_csv, metavar="M1,M2", help="default: all (full always runs, as the baseline)")
    bv.add_argument("--ratio", type=float, default=100)
    bv.add_argument("--batch-size", type=int, default=4096, help="scoring batch")
    bv.add_argument("--rows", type=int, help="only the first N rows of the data (a quick run)")
    bv.add_argument("--storage-path", default="runs/bench")
    bv.add_argument("--output-json", metavar="PATH")
    bv.add_argument("--markdown", metavar="PATH")
    bc = bsub.add_parser("coordinator", help="hot-set exchange at 8/64/256 simulated workers: merge, store, latency")
    bc.add_argument("--workers", type=lambda t: _csv(t, int), default=[8, 64, 256], metavar="N1,N2")
    bc.add_argument("--slots", type=int, default=100_000, help="hot slots")
    bc.add_argument("--candidates-per-worker", type=int, help="default: cafe's summary_factor (2) x slots / workers")
    bc.add_argument("--rounds", type=int, default=12)
    bc.add_argument("--no-store", action="store_true", help="without the actor's write-ahead state (what it costs)")
    bc.add_argument("--sync-interval", type=int, default=20, help="the verdict's cafe.sync_interval")
    bc.add_argument("--sync-lag", type=int, default=2, help="the verdict's cafe.sync_lag")
    bc.add_argument("--address", help="a Ray cluster (default: a local one)")
    bc.add_argument("--output-json", metavar="PATH")
    bd = bsub.add_parser("drift", help="CAFE vs hashing at equal memory on drifting synthetic data")
    bd.add_argument("--rows", type=int, default=1_000_000)
    bd.add_argument("--cardinality-scale", type=float, default=0.01)
    bd.add_argument("--drift-period", type=int, default=200_000)
    bd.add_argument("--ratio", type=float, default=100.0)
    bd.add_argument("--methods", nargs="+", default=["hash", "cafe"])
    bd.add_argument("--num-workers", type=int, default=1)
    bd.add_argument("--data-dir", default="data/synth_drift")
    bd.add_argument("--set", action="append", metavar="KEY=VALUE", help="override for every run")
    bd.add_argument("--output-json", metavar="PATH")
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirect), not the one at start."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ours = logging.getLogger("cafe_dist")  # what cafe-dist says goes to stderr, one line each; libraries'
    if not ours.handlers:                  # INFO chatter (fbgemm, mlflow) stays out
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[cafe-dist] %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    handlers = {"data": cmd_data, "train": cmd_train, "compare": cmd_compare, "sweep": cmd_sweep,
                "submit": cmd_submit, "status": cmd_jobs, "logs": cmd_jobs, "stop": cmd_jobs, "bench": cmd_bench,
                "export": cmd_export, "demo": cmd_demo, "hot": cmd_hot, "plan": cmd_plan, "evaluate": cmd_evaluate, "predict": cmd_predict}
    try:
        if getattr(args, "output_json", None) and args.command != "evaluate":  # (evaluate: with --overwrite)
            from cafe_dist.outputs import check_file

            check_file(args.output_json, flag="--output-json")  # a bad path is said now, not after the run
        return handlers[args.command](args)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, LookupError, ConnectionError,
            *USER_ERRORS) as e:
        print(f"cafe-dist: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that is full or read-only, a path under a file: the path and what to do
        print(f"cafe-dist: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cafe-dist: interrupted; nothing half-written was kept (a named run resumes from its newest "
              "checkpoint when run again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
