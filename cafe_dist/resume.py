"""Whether a named run may continue from its checkpoints: only with the configuration that made them.

Re-running a ``ray.name`` resumes its newest complete checkpoint. That is right after a crash or a
stop, and wrong when the configuration changed in between: the old state would be trained on under
new settings (or fail to load), and the result would be reported as if the new settings made it.
So every checkpoint records the settings that determine the result (:func:`result_config`: the
config without run-control keys, with the dataset identified by its ``meta.json`` rather than its
path) and their fingerprint, and :func:`decide` allows a resume only when they match:

- no checkpoint: a fresh run;
- the newest checkpoint is the run's final one and the settings match: the run is done, and its
  stored result is reported (nothing is trained or logged again);
- the settings differ: refused with the differing keys and the two ways out: a new ``ray.name``,
  or ``ray.resume=force`` (``--resume force``) to continue anyway, which is allowed only for
  keys that leave the checkpoint loadable (``train.*``: more steps, another learning rate).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

from cafe_dist.checkpoint_dirs import Found, resize_message, scan
from cafe_dist.config import ConfigError, JobConfig
from cafe_dist.data import storage
from cafe_dist.data.schema import DatasetMeta

log = logging.getLogger(__name__)

# Keys that say how or where a run executes, not what it computes. ray.num_workers is among them
# here because a different worker count has its own check and message (checkpoint.resize_message).
RUN_CONTROL_SECTIONS = ("ray", "mlflow", "checkpoint", "fault", "sweep", "data")
RUN_CONTROL_KEYS = ("train.eval_every", "train.log_every", "train.eval_batch_size", "train.pipeline")
# What a checkpoint's shapes depend on (and every method settings section): even --resume force
# cannot continue across these.
STRUCTURAL_PREFIXES = ("embedding.", "model.", "data.")


def _structural(key: str) -> bool:
    from cafe_dist.embeddings.registry import sections

    return key.startswith(STRUCTURAL_PREFIXES) or key.split(".")[0] in sections()


def result_config(job: JobConfig, meta: DatasetMeta) -> dict[str, Any]:
    """The flat settings a run's result depends on: run-control keys and the sections of methods
    other than ``embedding.method`` left out; the data as the digest of its ``meta.json``."""
    from cafe_dist.embeddings.registry import section_of, sections

    active = section_of(job.embedding.method)
    skip = {*RUN_CONTROL_SECTIONS, *(s for s in sections() if s != active)}
    flat = {k: v for k, v in job.flat().items() if k.split(".")[0] not in skip and k not in RUN_CONTROL_KEYS}
    flat["data.digest"] = data_digest(meta)
    flat["data.ids"] = "raw"  # what the tables were trained on (absent: contiguous vocabulary ids, before 2026-12)
    return flat


def data_digest(meta: DatasetMeta) -> str:
    """What identifies a dataset's content for a checkpoint: the digest of its ``meta.json``."""
    return hashlib.sha256(json.dumps(asdict(meta), sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (checkpoint's value, this run's value) for every key whose value differs."""
    missing = object()
    out = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, missing), new.get(k, missing)
        if a != b:
            out[k] = ("(absent)" if a is missing else a, "(absent)" if b is missing else b)
    return out


@dataclass(frozen=True)
class Decision:
    """What re-running a name does: ``resume_from`` (None: from scratch), or ``finished`` (the
    run's final checkpoint, whose result is the answer)."""

    resume_from: Found | None = None
    finished: Found | None = None


def _refusal(name: str, found: Found, diff: dict[str, tuple[Any, Any]], structural: list[str]) -> str:
    lines = [f"  {k}: {a!r} in the checkpoint, {b!r} now".replace("'(absent)'", "absent")
             for k, (a, b) in diff.items()]
    if not diff:
        lines = ["  (the checkpoint predates config fingerprints: its settings are unknown)"]
    ways = [f"  - a new run: --set ray.name={name}-2 (or any unused name)"]
    if structural:
        ways.append(f"  (--resume force cannot help: {', '.join(structural)} change(s) what the checkpoint holds)")
    else:
        ways.append("  - continue this run under the new settings anyway: --resume force (ray.resume=force)")
    return (f"run {name!r} has a checkpoint ({found.path}, step {found.step}) made with other settings:\n"
            + "\n".join(lines) + "\nResuming it would report a result these settings did not produce. Either:\n"
            + "\n".join(ways))


def decide(job: JobConfig, meta: DatasetMeta, name: str, run_dir: str) -> Decision:
    """Resume, report as done, or start fresh; :class:`ConfigError` when the settings differ."""
    newest, latest_state = scan(run_dir)
    if newest is None:
        return Decision()
    if latest_state is not None:
        elastic = bool(latest_state.info.get("elastic"))
        if elastic != job.ray.elastic:  # the data position means something else in the other mode
            raise ConfigError(f"run {name!r}: its checkpoint {latest_state.path} was written with ray.elastic="
                              f"{str(elastic).lower()}; resume it with the same setting, or start a new run "
                              f"(another ray.name)")
        if latest_state.world_size != job.ray.num_workers and not elastic:
            raise ConfigError(resize_message(latest_state, job.ray.num_workers))
    mine = result_config(job, meta)
    theirs = newest.info.get("config")
    diff = differing(theirs, mine) if theirs is not None else {}
    if theirs is None or diff:
        structural = [k for k in diff if _structural(k)]
        if job.ray.resume != "force" or structural:
            raise ConfigError(_refusal(name, newest, diff, structural))
        steps = min(steps_per_epoch(meta.rows["train"], job.ray.num_workers, job.train.batch_size) * job.train.epochs,
                    job.train.max_steps or float("inf"))
        if newest.final and steps <= newest.step:
            # nothing would train: a rewrite of the final checkpoint could only lose what it holds
            log.warning("%s: --resume force changes nothing: the run finished at step %d and these settings train "
                        "no further step (%s); its checkpoint and MLflow run are left as they are. Raise "
                        "train.max_steps or train.epochs to train on, or start a new run (another ray.name) to "
                        "train with the new settings from scratch.", name, newest.step,
                        ", ".join(f"{k} {b!r} (was {a!r})" for k, (a, b) in diff.items()) or "settings unknown")
            return Decision(finished=newest)
        log.warning("%s: resuming despite changed settings (--resume force): %s", name, ", ".join(diff) or "unknown")
    elif newest.final and job.ray.resume != "force":
        return Decision(finished=newest)
    return Decision(resume_from=latest_state)


def steps_per_epoch(train_rows: int, world_size: int, batch_size: int) -> int:
    """Steps of one epoch: every rank trains equal whole batches of its shard (the trainer counts
    its progress with this too)."""
    return train_rows // world_size // batch_size


def finished_result(found: Found) -> dict[str, Any]:
    """The metrics a finished run reported (its final checkpoint's ``result.json``)."""
    return json.loads(storage.read_text(storage.join(found.path, "result.json")))
