"""What the quality and throughput benches share: the dataset they train on and one training run."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from cafe_dist.config import ConfigError, load_config
from cafe_dist.result import RunResult

log = logging.getLogger(__name__)

BENCH_SETTINGS = ("mlflow.enabled=false", "checkpoint.at_end=false")  # a bench measures, it keeps nothing


def prepare_data(data: str, work_dir: str | Path, rows: int | None = None) -> str:
    """``data`` is a converted dataset directory, or a Criteo TSV file (converted once into
    ``work_dir``/data/<file name>). ``rows``: only the first N rows (in time order) of either, kept
    as its own dataset beside the full one, so a quick run ranks methods on a prefix of the stream."""
    from cafe_dist.data.schema import META_FILE

    path = Path(data)
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no converted dataset (no {META_FILE}): convert it with "
                                    "`cafe-dist data criteo|avazu|synth --out DIR`, or pass a Criteo .tsv file")
        return str(path.resolve()) if rows is None else _head_of_dataset(path, rows, Path(work_dir, "data"))
    if not path.is_file():
        raise FileNotFoundError(f"--data {data}: neither a converted dataset directory nor a Criteo TSV file")
    stem = path.name.split(".")[0] + (f"_first{rows}" if rows else "")
    out = Path(work_dir, "data", stem).resolve()
    if not (out / META_FILE).is_file():
        from cafe_dist.data.formats.criteo import convert_criteo

        source = path
        if rows is not None:
            from cafe_dist.data.textsource import open_stream

            source = out.with_name(stem + ".tsv")
            source.parent.mkdir(parents=True, exist_ok=True)
            with open_stream(path) as f, open(source, "wb") as dst:  # the first N lines, as they are
                left = rows
                while left > 0 and (chunk := f.read(8 << 20)):
                    cut = len(chunk)
                    if chunk.count(b"\n") >= left:  # the N-th newline ends this chunk's share
                        cut = len(b"\n".join(chunk.split(b"\n", left)[:left])) + 1
                    left -= chunk[:cut].count(b"\n")
                    dst.write(chunk[:cut])
        log.info("bench: converting %s → %s", source, out)
        convert_criteo([str(source)], out, progress=False)
    return str(out)


def _head_of_dataset(path: Path, rows: int, work: Path) -> str:
    """The first ``rows`` rows of a converted dataset, split as it was (the same test fraction, test
    rows taken from the start of its test split), its distinct counts and list of values kept (the
    tables are sized as for the whole dataset)."""
    import shutil

    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from cafe_dist.data.schema import META_FILE, SPLITS, VALUES_FILE, DatasetMeta, values_file
    from cafe_dist.data.target import staged_dataset

    meta = DatasetMeta.load(path)
    total = sum(meta.rows.values())
    if rows >= total:
        return str(path.resolve())
    n_test = int(round(rows * meta.rows["test"] / total))
    want = {"train": rows - n_test, "test": n_test}
    out = (work / f"{path.name}_first{rows}").resolve()
    if (out / META_FILE).is_file():
        return str(out)
    with staged_dataset(out) as stage:
        for split in SPLITS:
            (stage / split).mkdir()
            table = pads.dataset(path / split, format="parquet").head(want[split])
            pq.write_table(table, stage / split / "part-00000.parquet")
        listed = values_file(path)
        if listed is not None:
            shutil.copy(listed, stage / VALUES_FILE)
        meta.rows = want
        meta.extra = {**meta.extra, "head_of": str(path.resolve()), "head_rows": rows}
        meta.save(stage)
    return str(out)


def train_once(data_dir: str, method: str, ratio: float, num_workers: int, storage_path: str,
               overrides: tuple[str, ...] = ()) -> RunResult | str:
    """One run through the normal Ray Train path; a ratio the method cannot reach on these features
    comes back as the reason (a string) instead of failing the whole bench."""
    from cafe_dist.train.launcher import run_training

    job = load_config(None, [f"data.path={data_dir}", f"embedding.method={method}",
                             f"embedding.compression_ratio={ratio}", f"ray.num_workers={num_workers}",
                             f"ray.storage_path={storage_path}",
                             f"ray.name=bench-{method}-{ratio:g}x-{num_workers}w-{uuid.uuid4().hex[:8]}",
                             *BENCH_SETTINGS, *overrides])
    try:
        return run_training(job)
    except ConfigError as e:  # e.g. "smallest form is N×": reported, not fatal
        log.info("bench: %s at %gx: %s", method, ratio, e)
        return str(e)
