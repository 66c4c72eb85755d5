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


def test_a_sweeps_cells_are_every_method_ratio_and_seed_with_full_once_per_seed():
    from cafe_dist.sweep import cells_of

    cells = cells_of(["hash", "full", "cafe"], [10, 100], [0, 1])
    assert len(cells) == 2 * 2 * 2 + 2 and ("full", 1.0, 0) in cells and ("full", 1.0, 1) in cells
    assert not [c for c in cells if c[0] == "full" and c[1] != 1.0]


def test_the_sweep_plot_draws_seeds_as_error_bars_and_full_as_a_reference_line(tmp_path):
    import math

    from cafe_dist.compare import RunRow, plot_auc_vs_ratio

    def row(method, ratio, auc):
        return RunRow("id", "n", method, ratio, 1.0, auc, 0.5, 1.0, 1, "FINISHED", requested_ratio=ratio)

    rows = [row("hash", 10, 0.70), row("hash", 10, 0.72), row("hash", 100, 0.69), row("full", 1, 0.74),
            row("full", 1, 0.745), row("cafe", 100, math.nan)]
    path = tmp_path / "p.png"
    assert plot_auc_vs_ratio(rows, path) == 3  # hash at 10x and 100x, and the reference line
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_the_result_line_says_what_hot_coverage_is_a_share_of():
    from cafe_dist.commands.train import result_line
    from cafe_dist.result import RunResult

    out = RunResult("cafe", 0.75, 0.45, 100.0, 100.0, 1000, 100_000, 10, 2560, 5000.0, 2,
                    stats={"hot_coverage": 0.634, "peak_rss_bytes": 2.5e9, "steady_samples_per_sec": 9000.0})
    line = result_line(out)
    assert "hot rows served 63.4% of the compressed features' lookups (hot_coverage)" in line
    assert "peak worker memory 2.50 GB" in line and "9,000 samples/s steady (5,000 with start-up)" in line
    assert "hot rows" not in result_line(RunResult("hash", 0.7, 0.5, 100.0, 100.0, 1000, 100_000, 10, 2560, 5000.0, 2))
