"""``make demo`` (``cafe-dist demo``): the product in two minutes on the embedded synthetic data.

CAFE and the hashing trick train at the same memory (the job's ratio, 100x by default) on the same
local Ray cluster and MLflow store; a short table compares them beside what ``full`` tables would
take; the CAFE model is exported, scores a few test rows, and the commands to look at the runs and
serve the model close the output.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from cafe_dist.config import JobConfig, load_config
from cafe_dist.logs import quiet
from cafe_dist.result import RunResult

log = logging.getLogger("cafe_dist")
METHODS = ("cafe", "hash")


def _mb(n: float) -> str:
    return f"{n / 1e6:,.3f} MB"


def run_demo(config: str, overrides: list[str], ratio: float, output_json: str | None) -> dict[str, RunResult]:
    from cafe_dist.mlflow_store import resolve_uri
    from cafe_dist.serving.export import export_checkpoint
    from cafe_dist.serving.model import ServedModel
    from cafe_dist.serving.scoring import open_source
    from cafe_dist.train.launcher import run_training

    stamp, t0 = time.strftime("%Y%m%d-%H%M%S"), time.perf_counter()
    results: dict[str, RunResult] = {}
    job: JobConfig | None = None
    for method in METHODS:
        # only CAFE's model is exported and served: the contrast run skips logging its own
        extra = [] if method == "cafe" else ["mlflow.log_model=false"]
        job = load_config(config, [*overrides, f"embedding.method={method}", f"embedding.compression_ratio={ratio}",
                                   f"ray.name=demo-{method}-{ratio:g}x-{stamp}", *extra])
        log.info("demo: %s at %gx", method, ratio)
        with quiet("cafe_dist.train.launcher", level=logging.WARNING):  # its serve hint: the demo's own below
            results[method] = run_training(job)
    assert job is not None
    cafe = results["cafe"]
    model_dir = Path("models", f"demo-cafe-{ratio:g}x-{stamp}")
    model_dir.parent.mkdir(exist_ok=True)
    with quiet("cafe_dist.export"):  # the summary below says what was exported where
        doc = export_checkpoint(cafe.checkpoint_path, model_dir)
        int8 = export_checkpoint(cafe.checkpoint_path, int8_dir(model_dir), quantize="int8")
    model = ServedModel.load(model_dir)
    with open_source(cafe.data_path, model.meta) as src:
        batch = next(src.batches(3, model.meta))
    scores = model.score(batch.dense, batch.raw)

    lines = [f"{'method':8s} {'ratio':>7s} {'test AUC':>9s} {'logloss':>8s} {'embeddings':>12s} "
             f"{'steady samples/s':>16s}"]
    for m, r in results.items():
        lines.append(f"{m:8s} {r.compression_ratio:>6.0f}x {r.auc:>9.4f} {r.logloss:>8.4f} {_mb(r.embedding_bytes):>12s} "
                     f"{r.steady_samples_per_sec:>16,.0f}")
    lines.append(f"{'full':8s} {'1x':>7s} {'':>9s} {'':>8s} {_mb(cafe.full_embedding_bytes):>12s}   (what uncompressed "
                 "tables would take)")
    print("\n" + "\n".join(lines))
    print(f"CAFE - hash: {cafe.auc - results['hash'].auc:+.4f} AUC at the same memory.")
    print(f"Exported the CAFE model to {model_dir} (embeddings {_mb(doc['bytes']['embeddings'])}, "
          f"{_mb(int8['bytes']['embeddings'])} with int8 tables in {int8_dir(model_dir)}; dense "
          f"{_mb(doc['bytes']['dense'])}). Its scores for the first test rows:")
    for i, (s, y) in enumerate(zip(scores, batch.labels)):
        print(f"  row {i}: click probability {s:.3f} (label {int(y)})")
    uri = resolve_uri(job.mlflow.tracking_uri)
    nxt = [f"  .venv/bin/cafe-dist evaluate --model {model_dir} --input {cafe.data_path}"]
    if cafe.mlflow_run_id:
        nxt += [f"  .venv/bin/mlflow ui --backend-store-uri {uri}   # the runs side by side",
                f"  PATH=.venv/bin:$PATH MLFLOW_TRACKING_URI={uri} mlflow models serve "
                f"-m runs:/{cafe.mlflow_run_id}/model --env-manager local -p 5001"]
    print("\nNext:\n" + "\n".join(nxt))
    log.info("demo done in %.0f s", time.perf_counter() - t0)
    if output_json:
        Path(output_json).write_text(json.dumps({m: r.to_dict() for m, r in results.items()}, indent=2,
                                                default=_plain) + "\n")
    return results


def int8_dir(model_dir: Path) -> Path:
    return model_dir.with_name(model_dir.name + "-int8")


def _plain(x: object) -> object:
    return x.item() if isinstance(x, np.generic) else str(x)
