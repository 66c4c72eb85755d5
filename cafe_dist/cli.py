"""``cafe-dist`` command line: data conversion/generation, training, sweeps, run comparison, jobs on
a Ray cluster and benchmarks."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cafe_dist.checkpoint_dirs import CheckpointError
from cafe_dist.config import ConfigError
from cafe_dist.errors import USER_ERRORS, os_error_message


def build_parser() -> argparse.ArgumentParser:
    from cafe_dist import __version__
    from cafe_dist.commands import MODULES

    p = argparse.ArgumentParser(prog="cafe-dist", description=__doc__)
    p.add_argument("--version", action="version", version=f"cafe-dist {__version__}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)
    for module in MODULES:
        module.register(sub)
    return p


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirect), not the one at start."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not getattr(args, "verbose", False):  # before Ray is imported: our workers' lines without Ray's
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")  # "(RayTrainWorker pid=...)" prefix
    ours = logging.getLogger("cafe_dist")  # what cafe-dist says goes to stderr, one line each; libraries'
    if not ours.handlers:                  # INFO chatter (fbgemm, mlflow) stays out
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("[cafe-dist] %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(logging.INFO)
        ours.propagate = False
    try:
        if getattr(args, "output_json", None) and args.command != "evaluate":  # (evaluate: with --overwrite)
            from cafe_dist.outputs import check_file

            check_file(args.output_json, flag="--output-json")  # a bad path is said now, not after the run
        return args.handler(args)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, LookupError, ConnectionError,
            *USER_ERRORS) as e:
        print(f"cafe-dist: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that is full or read-only, a path under a file: the path and what to do
        print(f"cafe-dist: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cafe-dist: interrupted; nothing half-written was kept (a named run resumes from its newest "
              "checkpoint when run again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
