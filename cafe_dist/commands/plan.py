"""``cafe-dist plan``: the sharding plan and per-rank memory of a job on N devices."""

from __future__ import annotations

import argparse
import json

from cafe_dist.commands.args import csv_list, output_json, positive, positive_float
from cafe_dist.config import ConfigError, load_config


def cmd_plan(args: argparse.Namespace) -> int:
    from cafe_dist.data import storage
    from cafe_dist.data.schema import DatasetMeta
    from cafe_dist.outputs import write_text
    from cafe_dist.plan import Topo, input_cores, plan_job, profile_meta, render

    job = load_config(args.config, list(args.set or []))
    profile = args.profile
    if not profile and storage.is_file(storage.join(job.data.path, "meta.json")):
        meta, source = DatasetMeta.load(job.data.path), job.data.path
    elif profile or (profile := job.data.profile):
        meta, source = profile_meta(profile), f"the {profile} profile"
    else:
        raise ConfigError(f"{job.data.path} holds no dataset here (no meta.json): plan for a profile's published "
                          "cardinalities with --profile criteo-tb (or criteo-kaggle), or set data.profile")
    traffic = _traffic(profile or job.data.profile or meta.extra.get("profile")
                       or (meta.extra.get("synth") or {}).get("profile"))
    topo = Topo(args.world_size if args.world_size is not None else job.ray.num_workers, args.gpus_per_node,
                args.hbm_gb, "cuda" if job.ray.use_gpu else "cpu")
    ratios = args.ratios or [1.0, 10.0, 100.0, 1000.0]
    if any(r < 1 for r in ratios):
        raise ConfigError(f"--ratios: every compression ratio must be at least 1, got {', '.join(map(str, ratios))}")
    plans = plan_job(job, meta, topo, ratios, find_min=not args.no_min, traffic=traffic)
    print(render(plans, topo, f"{args.config} ({source}, {job.embedding.method}, dim {job.embedding.dim})",
                 find_min=not args.no_min))
    if args.output_json:
        write_text(args.output_json, json.dumps({"config": args.config, "source": source, "topology": topo.__dict__,
                                                 "plans": [p.to_json() for p in plans],
                                                 **({"input": input_cores(topo)} if topo.device == "cuda" else {})},
                                                indent=1))
    return 0 if all(p.fits for p in plans) else 1


def _traffic(profile: str | None):
    """The value laws the hot rows' expected traffic comes from: the profile planned for, or the one
    the job or its (generated) dataset names; None: no law known (no hot-row balance in the plan)."""
    from cafe_dist.data.profile import Profile

    return Profile.load(profile) if profile else None


def register(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plan", help="the sharding plan and per-rank memory of a job on N devices (none needed here)")
    pl.add_argument("--config", required=True, metavar="FILE", help="the job to plan (YAML)")
    pl.add_argument("--world-size", type=positive, help="devices (default: the job's ray.num_workers)")
    pl.add_argument("--gpus-per-node", type=positive, default=8, help="devices per node (default 8)")
    pl.add_argument("--hbm-gb", type=positive_float, default=80.0,
                    help="memory per device in GiB (HBM for GPU jobs, RAM per worker for CPU jobs)")
    pl.add_argument("--ratios", type=lambda t: csv_list(t, float), metavar="R1,R2", help="default 1,10,100,1000")
    pl.add_argument("--profile", choices=["criteo-kaggle", "criteo-tb"],
                    help="plan for a profile's published cardinalities instead of the job's dataset")
    pl.add_argument("--no-min", action="store_true", help="skip the search for the smallest world size")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    output_json(pl, "every rank's plan")
    pl.set_defaults(handler=cmd_plan)
