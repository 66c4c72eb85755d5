"""``cafe-dist data``: convert click logs (every format plugin), generate synthetic data, fit a
generator profile, LMA's signatures, full's vocabulary."""

from __future__ import annotations

import argparse
import logging
import sys

from cafe_dist.commands.args import positive


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
    if args.format in ("fit-profile", "signatures", "vocabulary"):
        return {"fit-profile": _fit_profile, "signatures": _signatures, "vocabulary": _vocabulary}[args.format](args)
    if args.format == "criteo" and args.address:
        from cafe_dist.data.distributed import convert_criteo_distributed

        meta = convert_criteo_distributed(args.input, args.out, test_fraction=args.test_fraction,
                                          address=args.address, overwrite=args.overwrite)
    elif args.format == "synth":
        from cafe_dist.data.synth import SynthSpec, generate_synthetic

        spec = SynthSpec(rows=args.rows, seed=args.seed, cardinality_scale=args.cardinality_scale,
                         zipf_a=args.zipf_a, drift_period=args.drift_period,
                         drift_fraction=args.drift_fraction, profile=args.profile)
        meta = generate_synthetic(args.out, spec, test_fraction=args.test_fraction, overwrite=args.overwrite)
    else:  # a click-log format plugin (cafe_dist.data.formats)
        from cafe_dist.data.formats import FORMATS, CsvSpec

        fmt = FORMATS[args.format](CsvSpec.load(args.spec)) if args.format == "csv" else FORMATS[args.format]()
        meta = fmt.convert(args.input, args.out, test_fraction=args.test_fraction, overwrite=args.overwrite)
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


def _vocabulary(args: argparse.Namespace) -> int:
    """``full``'s vocabulary of a converted dataset (see cafe_dist.data.vocabulary)."""
    from cafe_dist.data import storage
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.data.vocabulary import build_vocabulary

    data_dir = storage.resolve(args.dir)
    path = build_vocabulary(data_dir, DatasetMeta.load(data_dir), args.max_ids_per_feature, args.min_count)
    print(f"wrote {path}; a full run with full.max_ids_per_feature={args.max_ids_per_feature or 'null'} and "
          f"full.min_count={args.min_count} reads it (compressed methods read raw values and need none)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="convert click logs to Parquet, or generate synthetic data")
    dsub = data.add_subparsers(dest="format", required=True)
    for fmt, help_ in (("criteo", "Criteo Kaggle / CriteoTB TSV (.gz ok)"), ("avazu", "Avazu CSV"),
                       ("csv", "any delimited click log, described by --spec SPEC.yaml (see cafe_dist/data/formats/csv.py)"),
                       ("libsvm", "libsvm / libfm lines (label idx:val ...; the k-th pair is field k) or libffm "
                                  "(label field:idx:val ...)")):
        d = dsub.add_parser(fmt, help=help_)
        d.add_argument("--input", nargs="+", required=True, metavar="FILE",
                       help="the raw file(s), in time order (.gz ok; local paths or URIs)")
        if fmt == "csv":
            d.add_argument("--spec", required=True, metavar="SPEC.yaml",
                           help="delimiter, header, label, categorical, dense and time columns")
        d.add_argument("-o", "--out", "--output", dest="out", required=True, metavar="DIR",
                       help="the converted dataset (a new directory; --overwrite to replace one)")
        d.add_argument("--test-fraction", type=float, default=1 / 7,
                       help="last fraction of rows used as test split (default 1/7, as in CAFE)")
        if fmt == "criteo":
            d.add_argument("--address", help="convert as a distributed Ray Data job on this Ray cluster "
                                             "(ray://HEAD:10001, auto, or 'local'); --out must be shared storage")
    s = dsub.add_parser("synth", help="Criteo-shaped synthetic data with skew and drift")
    s.add_argument("-o", "--out", "--output", dest="out", required=True, metavar="DIR", help="the dataset directory")
    s.add_argument("--rows", type=positive, required=True, help="rows to generate (train and test)")
    s.add_argument("--seed", type=int, default=0, help="random seed (the same seed, the same rows)")
    s.add_argument("--cardinality-scale", type=float, default=0.01,
                   help="multiplies Criteo Kaggle's per-feature cardinalities")
    s.add_argument("--zipf-a", type=float, default=1.1, help="Zipf exponent of the ids' popularity")
    s.add_argument("--drift-period", type=int, default=0, help="rows between rotations (0: rows/4)")
    s.add_argument("--drift-fraction", type=float, default=0.05,
                   help="share of the popular ids replaced at each rotation")
    s.add_argument("--test-fraction", type=float, default=1 / 7, help="last fraction of rows for the test split")
    s.add_argument("--profile", help="a fitted feature profile: criteo-kaggle (Criteo Kaggle's 26 features at full "
                                     "cardinality, fitted on the real 0.3 %% sample), criteo-tb, or a JSON file; "
                                     "--cardinality-scale and --zipf-a are then unused")
    fp = dsub.add_parser("fit-profile", help="fit a generator profile from a real Criteo TSV sample")
    fp.add_argument("--input", nargs="+", required=True, metavar="FILE", help="real Criteo TSV rows (.gz ok)")
    fp.add_argument("-o", "--out", "--output", dest="out", required=True, metavar="JSON",
                    help="e.g. cafe_dist/data/profiles/criteo_kaggle.json (the shipped one)")
    fp.add_argument("--name", default="criteo-kaggle", help="the profile's name (default criteo-kaggle)")
    sg = dsub.add_parser("signatures", help="LMA's min-hash signatures of a converted dataset's values")
    sg.add_argument("dir", metavar="DIR", help="a converted dataset (local path or URI); written to DIR/lma/")
    sg.add_argument("--sample-rows", type=positive, default=125_000,
                    help="train rows drawn uniformly to define each value's row set (the authors use 125,000)")
    sg.add_argument("--min-count", type=positive, default=2, help="sampled rows a value needs for a signature")
    sg.add_argument("--seed", type=int, default=0, help="the row sample and the min-hash functions")
    sg.add_argument("--address", help="read the sample as a Ray Data job on this cluster (ray://HEAD:10001, "
                                      "auto, or 'local'); the same sample as without")
    vb = dsub.add_parser("vocabulary", help="full's vocabulary of a converted dataset (a full run builds the one "
                                            "it needs by itself; compressed methods need none)")
    vb.add_argument("dir", metavar="DIR", help="a converted dataset (local path or URI); written to DIR/vocabulary/")
    vb.add_argument("--max-ids-per-feature", type=positive, default=None,
                    help="keep at most this many values per feature, the most frequent (MLPerf caps CriteoTB at "
                         "40,000,000); the rest share row 0")
    vb.add_argument("--min-count", type=positive, default=1, help="train occurrences a value needs for its own row")
    for d in (*(dsub.choices[f] for f in ("criteo", "avazu", "csv", "libsvm")), s):
        d.add_argument("--overwrite", action="store_true",
                       help="replace the dataset already in --out (only once the new one is complete)")
    data.set_defaults(handler=cmd_data)
