"""What the quality and throughput benches share: the dataset they train on and one training run."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

from cafe_dist.config import ConfigError, load_config

BENCH_SETTINGS = ("mlflow.enabled=false", "checkpoint.at_end=false")  # a bench measures, it keeps nothing


def prepare_data(data: str, work_dir: str | Path) -> str:
    """``data`` is a converted dataset directory, or a Criteo TSV file (converted once into
    ``work_dir``/<file name>)."""
    from cafe_dist.data.schema import META_FILE

    path = Path(data)
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no converted dataset (no {META_FILE}): convert it with "
                                    "`cafe-dist data criteo|avazu|synth --out DIR`, or pass a Criteo .tsv file")
        return str(path.resolve())
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: neither a converted dataset directory nor a Criteo TSV file")
    out = Path(work_dir, "data", path.name.split(".")[0]).resolve()
    if not (out / META_FILE).is_file():
        from cafe_dist.data.criteo import convert_criteo

        print(f"[cafe-dist bench] converting {path} → {out}", file=sys.stderr, flush=True)
        convert_criteo([str(path)], out, progress=False)
    return str(out)


def train_once(data_dir: str, method: str, ratio: float, num_workers: int, storage_path: str,
               overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One run through the normal Ray Train path; a ratio the method cannot reach on these features
    comes back as ``{"error": ...}`` instead of failing the whole bench."""
    from cafe_dist.train.launcher import run_training

    job = load_config(None, [f"data.path={data_dir}", f"embedding.method={method}",
                             f"embedding.compression_ratio={ratio}", f"ray.num_workers={num_workers}",
                             f"ray.storage_path={storage_path}",
                             f"ray.name=bench-{method}-{ratio:g}x-{num_workers}w-{uuid.uuid4().hex[:8]}",
                             *BENCH_SETTINGS, *overrides])
    try:
        return run_training(job)
    except ConfigError as e:  # e.g. "smallest form is N×": reported, not fatal
        print(f"[cafe-dist bench] {method} at {ratio:g}x: {e}", file=sys.stderr, flush=True)
        return {"error": str(e)}
