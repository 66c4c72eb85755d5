"""``cafe-dist job submit|status|logs|stop``: jobs on a Ray cluster, as ``ray job`` names them.

The top-level ``submit``, ``status``, ``logs`` and ``stop`` of earlier releases still work, with a
notice, for one release."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cafe_dist.commands.args import key_value


def cmd_submit(args: argparse.Namespace) -> int:
    from cafe_dist import submit as jobs

    env = dict(args.env or [])
    job_id = jobs.submit(args.config, args.address, args.num_workers, args.set, env, tracking_uri=args.tracking_uri,
                         submission_id=args.job_id)
    print(f"submitted {job_id} to {jobs.address_or_default(args.address)}", file=sys.stderr, flush=True)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    final = jobs.follow(job_id, args.address)
    print(f"job {job_id}: {final}", file=sys.stderr)
    return jobs.EXIT_CODES.get(final, 1)


def cmd_jobs(args: argparse.Namespace) -> int:
    """status / logs / stop of submitted jobs."""
    from cafe_dist import submit as jobs

    if args.job_command == "status":
        info = jobs.status(args.job_id, args.address) if args.job_id else jobs.list_jobs(args.address)
        print(json.dumps(info, indent=2, default=str))
    elif args.job_command == "logs":
        if args.follow:
            final = jobs.follow(args.job_id, args.address)
            print(f"job {args.job_id}: {final}", file=sys.stderr)
        else:
            sys.stdout.write(jobs.logs(args.job_id, args.address))
    else:
        final = jobs.stop(args.job_id, args.address)
        print(f"job {args.job_id}: {final}")
        return 0 if final in ("STOPPED", "SUCCEEDED", "FAILED") else 1
    return 0


JOB_COMMANDS = {"submit": "submit a training job to a Ray cluster (Ray Jobs API)",
                "status": "a job's status (all jobs without JOB_ID)", "logs": "a job's logs", "stop": "stop a running job"}


def register(sub: argparse._SubParsersAction) -> None:
    job = sub.add_parser("job", help="jobs on a Ray cluster: submit, status, logs, stop (as `ray job`)")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="{submit,status,logs,stop}")
    for name, help_ in JOB_COMMANDS.items():
        _job_parser(jsub.add_parser(name, help=help_), name, old=False)
    for name, help_ in JOB_COMMANDS.items():  # the names of earlier releases, for one more
        _job_parser(sub.add_parser(name, help=f"(old name of `cafe-dist job {name}`) {help_}"), name, old=True)


def _job_parser(p: argparse.ArgumentParser, name: str, old: bool) -> None:
    handler = cmd_submit if name == "submit" else cmd_jobs
    p.set_defaults(job_command=name, handler=_renamed(handler, name) if old else handler)
    if name == "submit":
        if old:
            p.add_argument("config", metavar="JOB.yaml", help="job spec under the working directory (uploaded with it)")
        else:
            p.add_argument("--config", required=True, metavar="FILE",
                           help="job spec under the working directory (uploaded with it)")
        p.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS, else http://127.0.0.1:8265)")
        p.add_argument("--num-workers", type=int, help="Ray Train workers (ray.num_workers)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
        p.add_argument("--env", action="append", type=key_value, metavar="KEY=VALUE",
                       help="environment variable for the job")
        p.add_argument("--tracking-uri", help="MLflow store the job logs to (default $MLFLOW_TRACKING_URI, "
                                              "else the job's mlflow.tracking_uri)")
        p.add_argument("--job-id", help="submission id (default: Ray picks one)")
        p.add_argument("--wait", action="store_true", help="stream the logs and exit with the job's status")
        return
    p.add_argument("job_id", metavar="JOB_ID", nargs="?" if name == "status" else None,
                   help="the submission id `job submit` printed" + (" (none: every job)" if name == "status" else ""))
    p.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS or http://127.0.0.1:8265)")
    if name == "logs":
        p.add_argument("--follow", action="store_true", help="stream until the job ends")


def _renamed(handler, name: str):
    def run(args: argparse.Namespace) -> int:
        logging.getLogger("cafe_dist").warning("`cafe-dist %s` is now `cafe-dist job %s`%s; the old name goes in the "
                                               "next release", name, name, " --config FILE" if name == "submit" else "")
        return handler(args)
    return run
