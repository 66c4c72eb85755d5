"""``cafe-dist export``, ``evaluate``, ``predict``, ``hot``: a trained model outside training."""

from __future__ import annotations

import argparse
import json

from cafe_dist.commands.args import output_json, positive
from cafe_dist.config import ConfigError


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
          f"{b['training_embedding_bytes']:,}), dense {b['dense']:,}, "
          f"values of uncompressed features {b['values']:,}")
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


def register(sub: argparse._SubParsersAction) -> None:
    ht = sub.add_parser("hot", help="CAFE's hot ids per feature (raw values, scores) from a run's checkpoint")
    hsrc = ht.add_mutually_exclusive_group(required=True)
    hsrc.add_argument("--checkpoint", metavar="PATH", help="a checkpoint, or a run directory (its newest one)")
    hsrc.add_argument("--run", metavar="RUN_ID", help="an MLflow run (the checkpoint it finished with)")
    ht.add_argument("--top", type=int, default=20, help="ids per feature (strongest first)")
    ht.set_defaults(handler=cmd_hot)
    ex = sub.add_parser("export", help="a run's model as a self-contained directory (no Ray, no DMP)")
    src = ex.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="PATH", help="a checkpoint, or a run directory (its newest one)")
    src.add_argument("--run", metavar="RUN_ID", help="an MLflow run (the checkpoint it finished with)")
    ex.add_argument("-o", "--out", "--output", dest="out", required=True, metavar="DIR", help="a new directory")
    ex.add_argument("--quantize", choices=["int8"], help="tables row-wise int8 (fp16 scale and bias per row)")
    for name, help_ in (("evaluate", "AUC and logloss of a trained model on labelled rows"),
                        ("predict", "click probabilities of a trained model for every row")):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(handler=cmd_evaluate if name == "evaluate" else cmd_predict)
        sp.add_argument("--model", required=True, metavar="DIR|runs:/ID/model|models:/NAME/VERSION",
                        help="an exported model directory or an MLflow model URI")
        sp.add_argument("--input", required=True, metavar="FILE_OR_DATASET",
                        help="a raw Criteo TSV (.gz ok) / Avazu CSV, or a converted dataset (its --split)")
        sp.add_argument("--split", default="test", help="of a converted dataset (default: test)")
        sp.add_argument("--batch-size", type=positive, default=4096, help="rows scored at a time (default 4096)")
        if name == "evaluate":
            output_json(sp, "the AUC and logloss")
        else:
            sp.add_argument("-o", "--out", "--output", dest="out", required=True, metavar="PARQUET",
                            help="score (and label) per row")
        sp.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file (never the input)")
    ex.set_defaults(handler=cmd_export)
