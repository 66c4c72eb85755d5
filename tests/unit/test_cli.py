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


def _options(parser, path=()):
    """(command, option) of every option of every command."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _options(sub, (*path, name))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield " ".join(path), action


def test_every_option_of_every_command_has_help():
    from cafe_dist.cli import build_parser

    missing = [(cmd, a.option_strings or [a.dest]) for cmd, a in _options(build_parser()) if not a.help]
    assert not missing, missing


def test_every_command_that_writes_json_takes_o_and_output():
    from cafe_dist.cli import build_parser

    writers = {cmd for cmd, a in _options(build_parser()) if a.dest == "output_json"}
    assert {"train", "sweep", "demo", "plan", "evaluate", "bench input"} <= writers
    for cmd, a in _options(build_parser()):
        if a.dest in ("output_json", "out"):
            assert {"-o", "--output"} <= set(a.option_strings), (cmd, a.option_strings)
    args = build_parser().parse_args(["plan", "--config", "jobs/demo.yaml", "-o", "p.json"])
    assert args.output_json == "p.json"
    assert build_parser().parse_args(["plan", "--config", "x", "--output-json", "q.json"]).output_json == "q.json"


@pytest.mark.parametrize("old, new", [(["status"], ["job", "status"]), (["stop", "raysubmit_1"], ["job", "stop", "raysubmit_1"])])
def test_the_old_job_command_names_still_work_with_a_notice(old, new, capsys):
    """Both names reach the same command (here refused: nothing listens at the address); only the
    old one says it moved."""
    from cafe_dist.cli import build_parser

    address = ["--address", "http://127.0.0.1:9"]
    assert build_parser().parse_args([*old, *address]).job_command == build_parser().parse_args([*new, *address]).job_command
    assert main([*old, *address]) != 0
    err = capsys.readouterr().err
    assert f"`cafe-dist {old[0]}` is now `cafe-dist job {old[0]}`" in err and "cannot reach the Ray Jobs API" in err
    assert main([*new, *address]) != 0
    err = capsys.readouterr().err
    assert "is now" not in err and "cannot reach the Ray Jobs API" in err
