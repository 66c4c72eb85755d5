"""``cafe-dist submit``, ``status``, ``logs``, ``stop``: jobs on a Ray cluster."""

from __future__ import annotations

import argparse
import json
import sys

from cafe_dist.commands.args import key_value


def cmd_submit(args: argparse.Namespace) -> int:
    from cafe_dist import submit as jobs

    env = dict(args.env or [])
    job_id = jobs.submit(args.job, args.address, args.num_workers, args.set, env, tracking_uri=args.tracking_uri,
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

    if args.command == "status":
        info = jobs.status(args.job_id, args.address) if args.job_id else jobs.list_jobs(args.address)
        print(json.dumps(info, indent=2, default=str))
    elif args.command == "logs":
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


def register(sub: argparse._SubParsersAction) -> None:
    sj = sub.add_parser("submit", help="submit a training job to a Ray cluster (Ray Jobs API)")
    sj.add_argument("job", metavar="JOB.yaml", help="job spec under the working directory (uploaded with it)")
    sj.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS, else http://127.0.0.1:8265)")
    sj.add_argument("--num-workers", type=int)
    sj.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    sj.add_argument("--env", action="append", type=key_value, metavar="KEY=VALUE", help="environment variable for the job")
    sj.add_argument("--tracking-uri", help="MLflow store the job logs to (default $MLFLOW_TRACKING_URI, "
                                           "else the job's mlflow.tracking_uri)")
    sj.add_argument("--job-id", help="submission id (default: Ray picks one)")
    sj.add_argument("--wait", action="store_true", help="stream the logs and exit with the job's status")
    for name, help_ in (("status", "a job's status (all jobs without JOB_ID)"), ("logs", "a job's logs"),
                        ("stop", "stop a running job")):
        j = sub.add_parser(name, help=help_)
        j.set_defaults(handler=cmd_jobs)
        j.add_argument("job_id", metavar="JOB_ID", nargs="?" if name == "status" else None)
        j.add_argument("--address", help="Ray dashboard address (default $RAY_JOBS_ADDRESS or http://127.0.0.1:8265)")
        if name == "logs":
            j.add_argument("--follow", action="store_true", help="stream until the job ends")
    sj.set_defaults(handler=cmd_submit)
