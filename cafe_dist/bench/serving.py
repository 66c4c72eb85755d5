"""``cafe-dist bench serving``: what a deployed model costs, per method at one ratio beside ``full``.

Each method is trained once (one worker, one epoch, through the normal path), exported fp32 and
int8 (:mod:`cafe_dist.serving`), and both exports score the test split in this one process
(batch 4096 by default): exported bytes (tables, the method's serving state, dense weights), AUC of
each export against the run's own, and scoring rows/s (Parquet read, the
method's id transform and the model; the int8 tables are dequantised at load, so int8 changes
bytes, not speed).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cafe_dist.bench.runs import prepare_data, train_once
from cafe_dist.bench.throughput import machine
from cafe_dist.embeddings.registry import REGISTRY

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingSpec:
    data: str
    methods: tuple[str, ...] = field(default_factory=lambda: tuple(REGISTRY))
    ratio: float = 100.0
    batch_size: int = 4096  # scoring batch
    train_batch_size: int = 256
    rows: int | None = None
    storage_path: str = "runs/bench"


def _row(method: str, ratio: float, out: Any, exports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    fp32, int8 = exports["fp32"], exports["int8"]
    return {"method": method, "ratio": ratio, "run_auc": out.auc,
            "auc_fp32": fp32["auc"], "auc_int8": int8["auc"], "int8_minus_fp32": int8["auc"] - fp32["auc"],
            "embedding_bytes_fp32": fp32["bytes"]["embeddings"], "embedding_bytes_int8": int8["bytes"]["embeddings"],
            "method_state_bytes": fp32["bytes"]["method_state"], "dense_bytes": fp32["bytes"]["dense"],
            "values_bytes": fp32["bytes"]["values"], "training_embedding_bytes": out.embedding_bytes,
            "rows_per_s": fp32["rows_per_s"], "rows_per_s_int8": int8["rows_per_s"], "eval_rows": fp32["rows"]}


def run_serving_bench(spec: ServingSpec, output_json: str | Path | None = None,
                      markdown: str | Path | None = None) -> dict[str, Any]:
    from cafe_dist.serving.export import export_checkpoint
    from cafe_dist.serving.model import ServedModel
    from cafe_dist.serving.scoring import evaluate

    data_dir = prepare_data(spec.data, spec.storage_path, rows=spec.rows)
    methods = ["full", *[m for m in spec.methods if m != "full"]]
    rows, skipped = [], {}
    work = Path(spec.storage_path, "serving", time.strftime("%Y%m%d-%H%M%S"))
    for i, method in enumerate(methods, 1):
        ratio = 1.0 if method == "full" else spec.ratio
        log.info("bench serving %d/%d: %s at %gx", i, len(methods), method, ratio)
        out = train_once(data_dir, method, ratio, 1, spec.storage_path,
                         (f"train.batch_size={spec.train_batch_size}", "train.epochs=1", "train.max_steps=null",
                          "train.log_every=100", "checkpoint.at_end=true"))
        if isinstance(out, str):
            skipped[method] = out
            continue
        exports = {}
        for q in (None, "int8"):
            d = work / f"{method}-{q or 'fp32'}"
            doc = export_checkpoint(out.checkpoint_path, d, quantize=q)
            ev = evaluate(ServedModel.load(d), data_dir, batch_size=spec.batch_size)
            exports[q or "fp32"] = {**ev, "bytes": doc["bytes"]}
        rows.append(_row(method, ratio, out, exports))
        if output_json:  # a stopped bench keeps the methods it finished
            _write(output_json, {"spec": asdict(spec), "data_dir": data_dir, "runs": rows, "partial": True})
    by = {r["method"]: r for r in rows}
    for r in rows:
        for base in ("full", "hash"):
            if base in by:
                r[f"speed_vs_{base}"] = r["rows_per_s"] / by[base]["rows_per_s"]
                r[f"bytes_vs_{base}"] = r["embedding_bytes_fp32"] / by[base]["embedding_bytes_fp32"]
    result = {"machine": machine(), "spec": asdict(spec), "data_dir": data_dir, "runs": rows, "skipped": skipped}
    if output_json:
        _write(output_json, result)
    table = format_serving(rows)
    if markdown:
        Path(markdown).write_text(table + "\n")
    print(table)
    return result


def _write(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


def format_serving(rows: list[dict[str, Any]]) -> str:
    head = ("| method | ratio | emb. bytes fp32 | int8 | of which method state | dense | AUC run | fp32 | int8 − fp32 "
            "| rows/s | vs full | vs hash |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['method']} | {r['ratio']:g}x | {r['embedding_bytes_fp32']:,} | {r['embedding_bytes_int8']:,} "
                     f"| {r['method_state_bytes']:,} | {r['dense_bytes']:,} | {r['run_auc']:.4f} | {r['auc_fp32']:.4f} "
                     f"| {r['int8_minus_fp32']:+.4f} | {r['rows_per_s']:,.0f} | {r.get('speed_vs_full', float('nan')):.2f} "
                     f"| {r.get('speed_vs_hash', float('nan')):.2f} |")
    return "\n".join(lines)
