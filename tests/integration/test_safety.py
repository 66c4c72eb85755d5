"""Nothing lost, nothing silent: dataset writes that cannot destroy data, inputs refused with the
reason instead of a traceback, a sqlite store two runs can create at once. Real files, real
processes (a conversion killed with SIGKILL), a real full file system (a small tmpfs) and a real
MLflow store; the resume and sweep checks are in test_resume.py."""

from __future__ import annotations

import gzip
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SHARED_DATA, need, tmpfs

from cafe_dist.cli import main
from cafe_dist.config import load_config
from cafe_dist.errors import BadInputError
from cafe_dist.train.launcher import ensure_data

BIN = Path(sys.executable).parent
SMALL = SHARED_DATA / "criteo_sample200_deepctr_via_veloce.tsv"
HEAD10K = SHARED_DATA / "criteo_kaggle_train_head10k_wideresdnn.tsv"
UNLABELED = SHARED_DATA / "criteo_kaggle_test_head10k_unlabeled_wideresdnn.tsv"


def _tree(d: Path) -> dict[str, str]:
    """Every file under ``d`` (hidden ones too) with its SHA-256: equal trees mean nothing changed."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def _convert(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["data", *argv])
    return rc, capsys.readouterr().err


@pytest.fixture
def dataset(tmp_path, capsys) -> Path:
    out = tmp_path / "ds"
    assert _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(out))[0] == 0
    return out


def test_out_that_holds_something_else_is_refused_and_left_alone(tmp_path, capsys):
    """`--out DIR` where DIR has a train/ subfolder (a package folder, say) used to lose DIR/train."""
    pkg = tmp_path / "mypackage"
    (pkg / "train").mkdir(parents=True)
    (pkg / "train" / "model.py").write_text("print('mine')\n")
    (pkg / "README").write_text("mine\n")
    before = _tree(pkg)
    rc, err = _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(pkg))
    assert rc == 2 and "is not empty and is not a cafe-dist dataset" in err and "README, train" in err
    rc, err = _convert(capsys, "criteo", "--input", str(SMALL), "--out", str(pkg), "--overwrite")
    assert rc == 2 and "is not a cafe-dist dataset" in err  # --overwrite never replaces what is not ours
    assert _tree(pkg) == before and not _leftovers(tmp_path)


def test_replacing_a_dataset_needs_overwrite(dataset, capsys):
    before = _tree(dataset)
    rc, err = _convert(capsys, "criteo", "--input", str(need(HEAD10K)), "--out", str(dataset))
    assert rc == 2 and "already holds a dataset; pass --overwrite" in err and _tree(dataset) == before
    rc, _ = _convert(capsys, "criteo", "--input", str(HEAD10K), "--out", str(dataset), "--overwrite")
    assert rc == 0 and _tree(dataset) != before and '"train": 8571' in (dataset / "meta.json").read_text()
    assert not _leftovers(dataset.parent)


def test_a_dataset_beside_files_we_did_not_write_is_not_replaced(dataset, capsys):
    (dataset / "notes.txt").write_text("keep me\n")
    before = _tree(dataset)
    rc, err = _convert(capsys, "criteo", "--input", str(need(HEAD10K)), "--out", str(dataset), "--overwrite")
    assert rc == 2 and "files cafe-dist did not write (notes.txt)" in err and _tree(dataset) == before


def test_a_truncated_gz_names_file_and_place_and_keeps_the_old_dataset(dataset, tmp_path, capsys):
    """Was: the old train/ and test/ deleted before parsing, a stale meta.json left behind."""
    text = need(HEAD10K).read_bytes()
    body = gzip.compress(text * 40, compresslevel=1)  # ~400k lines: several 8 MB blocks before the cut
    bad = tmp_path / "day_0.gz"
    bad.write_bytes(body[: int(len(body) * 0.8)])
    before = _tree(dataset)
    rc, err = _convert(capsys, "criteo", "--input", str(bad), "--out", str(dataset), "--overwrite")
    assert rc == 2, err
    assert f"{bad}: cannot read past line " in err and "of the compressed file" in err
    assert "truncated or corrupt" in err and "gzip -t" in err
    line = int(err.split("cannot read past line ")[1].split(" ")[0].replace(",", ""))
    assert 0 < line < 400_000  # it got somewhere, and says how far
    assert _tree(dataset) == before and not _leftovers(tmp_path)


def test_a_killed_conversion_leaves_the_old_dataset_and_the_next_one_cleans_up(dataset, capsys):
    before = _tree(dataset)
    proc = subprocess.Popen([str(BIN / "cafe-dist"), "data", "synth", "--rows", "3000000", "--out", str(dataset),
                             "--overwrite"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not any((p / "_parts" / "part-00000.parquet").exists() for p in dataset.parent.glob(".ds.partial-*")):
        assert proc.poll() is None and time.time() < deadline, "the conversion ended before it could be killed"
        time.sleep(0.2)
    time.sleep(1.0)  # mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _tree(dataset) == before  # untouched
    assert len(_leftovers(dataset.parent)) == 1  # SIGKILL leaves its staging directory...
    rc, _ = _convert(capsys, "synth", "--rows", "2000", "--cardinality-scale", "0.0001", "--out", str(dataset),
                     "--overwrite")
    assert rc == 0 and not _leftovers(dataset.parent)  # ...which the next conversion removes
    assert '"format": "synth"' in (dataset / "meta.json").read_text()


def test_a_directory_as_input_is_named(tmp_path, capsys):
    rc, err = _convert(capsys, "criteo", "--input", str(tmp_path), "--out", str(tmp_path / "out"))
    assert rc == 2 and f"input {tmp_path} is a directory" in err


def test_an_out_under_a_file_is_refused_clearly(tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("x")
    rc, err = _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(tmp_path / "plain.txt" / "ds"))
    assert rc == 2 and "a part of its parent path is a file" in err
    rc, err = _convert(capsys, "criteo", "--input", str(SMALL), "--out", str(tmp_path / "plain.txt"))
    assert rc == 2 and "is a file, not a directory" in err


def test_disk_full_says_so_and_keeps_the_old_dataset(tmp_path, capsys):
    with tmpfs(tmp_path / "small-disk", "1200k") as disk:
        out = disk / "ds"
        assert _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(out))[0] == 0
        before = _tree(out)
        rc, err = _convert(capsys, "criteo", "--input", str(need(HEAD10K)), "--out", str(out), "--overwrite")
        assert rc == 2 and f"disk full while writing the dataset for {out}" in err
        assert "the previous dataset there is intact" in err
        assert _tree(out) == before and not _leftovers(disk)


def test_an_unwritable_out_is_refused_clearly(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m", "ro") as ro:
        rc, err = _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(ro / "ds"))
        assert rc == 2 and f"--out {ro / 'ds'}: cannot write in {ro}" in err


def _job(tmp_path: Path, data: Path | str, *extra: str):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {data}}}\n")
    return cfg, load_config(cfg, ["mlflow.enabled=false", f"ray.storage_path={tmp_path / 'runs'}", *extra])


def test_training_without_a_test_split_is_refused_before_it_starts(tmp_path, capsys):
    out = tmp_path / "all-train"
    rc, err = _convert(capsys, "criteo", "--input", str(need(SMALL)), "--out", str(out), "--test-fraction", "0")
    assert rc == 0 and "no test split" in err  # said at conversion already
    cfg, job = _job(tmp_path, out)
    with pytest.raises(BadInputError, match=r"has no test split .* could not report AUC"):
        ensure_data(job)
    assert main(["train", "--config", str(cfg)]) == 2


def test_training_on_an_unlabeled_conversion_is_refused_with_rc_2(tmp_path, capsys):
    out = tmp_path / "unlabeled"
    assert _convert(capsys, "criteo", "--input", str(need(UNLABELED)), "--out", str(out))[0] == 0
    cfg, _ = _job(tmp_path, out)
    capsys.readouterr()
    assert main(["train", "--config", str(cfg), "--set", "mlflow.enabled=false"]) == 2
    assert "converted from unlabeled files" in capsys.readouterr().err


def test_changed_synthetic_settings_regenerate_the_data(tmp_path):
    """Was: `--set data.synthetic.rows=5000` after `make demo` trained on the old 300k rows."""
    data = tmp_path / "synth"
    spec = ["data.synthetic.rows=3000", "data.synthetic.cardinality_scale=0.0001"]
    _, job = _job(tmp_path, data, *spec)
    assert sum(ensure_data(job).rows.values()) == 3000
    first = _tree(data)
    assert sum(ensure_data(job).rows.values()) == 3000 and _tree(data) == first  # same spec: reused as is
    _, job = _job(tmp_path, data, "data.synthetic.rows=2000", "data.synthetic.cardinality_scale=0.0001")
    assert sum(ensure_data(job).rows.values()) == 2000  # another spec: generated again
    _, job = _job(tmp_path, data, *spec, "data.synthetic.seed=7")
    meta = ensure_data(job)
    assert meta.extra["synth"]["seed"] == 7 and not _leftovers(tmp_path)


def test_a_synthetic_section_over_converted_data_is_refused(dataset, tmp_path):
    _, job = _job(tmp_path, dataset, "data.synthetic.rows=3000")
    with pytest.raises(BadInputError, match=r"holds a criteo dataset .* remove data.synthetic"):
        ensure_data(job)


def test_more_workers_than_this_machine_has_fails_at_once_with_the_numbers(tiny_synth, tmp_path):
    """Was: a local Ray with 66 fake CPUs, 64 workers spawned, a hang. Now refused before Ray starts."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text(f"data: {{path: {tiny_synth}}}\nmlflow: {{enabled: false}}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    t0 = time.time()
    r = subprocess.run([str(BIN / "cafe-dist"), "train", "--config", str(cfg), "--num-workers", "64"],
                       capture_output=True, text=True, env=env, timeout=120)
    cpus = os.cpu_count()
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"ray.num_workers=64 needs 64 CPUs (64 for the workers at ray.cpus_per_worker=1) but this machine has {cpus}" in r.stderr
    assert "ray.cpus_per_worker below 1" in r.stderr and "Traceback" not in r.stderr
    assert "Started a local Ray instance" not in r.stderr and time.time() - t0 < 90


@pytest.mark.slow  # two MLflow store creations racing (~40 s)
def test_two_runs_can_create_one_new_sqlite_store_at_once(tmp_path):
    """Both open the same new mlflow.db at the same instant; without the lock one died in the schema
    migration with a raw SQLAlchemy/alembic error (seen in 2 of 3 tries here)."""
    script = ("import sys, time\nfrom cafe_dist.tracking import RunTracker\n"
              "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
              "t = RunTracker(f'sqlite:///{sys.argv[1]}/mlflow.db', 'exp')\n"
              "print('experiment', t.experiment_id)\n")
    for attempt in range(2):
        store = tmp_path / f"store{attempt}"
        store.mkdir()
        start = time.time() + 5  # after both have imported mlflow
        procs = [subprocess.Popen([sys.executable, "-c", script, str(store), str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        for p, (_, err) in zip(procs, outs):
            assert p.returncode == 0, err[-2000:]
        assert {out.split()[-1] for out, _ in outs} == {outs[0][0].split()[-1]}  # one experiment, both see it
