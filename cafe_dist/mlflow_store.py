"""Where runs are tracked: the MLflow store's URI (config, then ``$MLFLOW_TRACKING_URI``, then
``sqlite:///mlflow.db``), opening it (created under a lock when new), and finding a finished run in
it. Both the run logging (:mod:`cafe_dist.tracking`) and the served model's loader
(:mod:`cafe_dist.serving.pyfunc`) read it, so neither imports the other for it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from cafe_dist.logs import quiet

DEFAULT_URI = "sqlite:///mlflow.db"


def resolve_uri(configured: str | None) -> str:
    """Config beats the environment beats the default; relative sqlite paths become absolute so
    workers in other directories write to the same store."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise creating (and migrating) a sqlite store: two runs that open one new ``mlflow.db`` at
    once would otherwise both run its schema migrations and one fails with a raw SQLAlchemy error."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_store(uri: str, experiment: str | None = None) -> tuple[MlflowClient, str | None]:
    """A client of the store at ``uri``, created if new, and the id of ``experiment`` (created if
    missing; None when no experiment is named), both under the store's lock."""
    with _store_lock(uri):
        with quiet("mlflow.store.db.utils"):  # "Creating initial MLflow database tables...": not news
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # creates or upgrades the store now, under the lock
        if experiment is None:
            return client, None
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            return client, exp.experiment_id
        location = None  # a sqlite store keeps its artifacts beside the database, not in the cwd
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return client, client.create_experiment(experiment, artifact_location=location)


def existing_store(uri: str) -> tuple[MlflowClient, str | None]:
    """:func:`open_store` for a command that only reads (``compare``): a local store that is not
    there is refused, not created empty beside a typo."""
    from cafe_dist.errors import BadInputError

    local = (uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else uri[len("file://"):]
             if uri.startswith("file://") else uri if "://" not in uri else None)
    if local is not None and not Path(local).exists():
        raise BadInputError(f"no MLflow store at {uri} ({local} does not exist); give the store runs were "
                            "logged to (--tracking-uri, or $MLFLOW_TRACKING_URI)")
    return open_store(uri)


def finished_run(run_id: str, uri: str | None = None) -> tuple[Any, MlflowClient]:
    """The MLflow run ``run_id`` if it finished (``export --run``, ``hot --run``, ``runs:/`` models);
    a sentence naming the store and the run's state otherwise."""
    from mlflow.exceptions import MlflowException

    from cafe_dist.errors import BadInputError

    uri = resolve_uri(uri)
    client, _ = existing_store(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise BadInputError(f"no MLflow run {run_id!r} in {uri}; list runs with `cafe-dist compare` (or pass "
                            "--tracking-uri / $MLFLOW_TRACKING_URI for another store)") from None
    if run.info.status != "FINISHED":
        why = run.data.tags.get("error")
        raise BadInputError(f"MLflow run {run_id} ({run.info.run_name}) is {run.info.status}, not FINISHED"
                            + (f" ({why})" if why else "") + "; it has no finished model to use")
    return run, client
