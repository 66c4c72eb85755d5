"""The command line's own conventions."""

from __future__ import annotations

import pytest

from cafe_dist import __version__
from cafe_dist.cli import main


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"cafe-dist {__version__}"


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_data_replaces_the_jobs_data_synthetic_section_included(command, tmp_path):
    from cafe_dist.cli import build_parser
    from cafe_dist.commands.train import job_overrides
    from cafe_dist.config import load_config

    args = build_parser().parse_args([command, "--config", "jobs/demo.yaml", "--data", str(tmp_path)])
    job = load_config(args.config, job_overrides(args))
    assert job.data.path == str(tmp_path) and job.data.synthetic is None
    assert load_config("jobs/demo.yaml").data.synthetic is not None  # what the demo job generates otherwise


def test_an_unnamed_run_is_named_for_its_method_ratio_and_data():
    from cafe_dist.config import load_config
    from cafe_dist.train.launcher import default_run_name

    job = load_config("jobs/demo.yaml", ["embedding.method=cafe", "embedding.compression_ratio=100"])
    name = default_run_name(job, "/mnt/shared/criteo_kaggle/")
    assert name.startswith("cafe-100x-criteo_kaggle-") and name != default_run_name(job, "/mnt/shared/criteo_kaggle")
