"""Where runs and models go: the tracking URI, experiment and registered-model name.

Resolution of the tracking URI: an explicit ``tracking_uri`` argument, else the
``MLFLOW_TRACKING_URI`` environment variable, else a local SQLite file
``<work_dir>/mlflow.db``. Experiments created in a SQLite store keep their artifacts in
``mlartifacts/`` beside the database file. The registry uses the same store.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient


@dataclass(frozen=True)
class TrackingConfig:
    """Tracking settings of a fit, sweep or scoring run.

    Attributes:
        work_dir: directory of the default SQLite store and its artifacts.
        tracking_uri: explicit store URI (``http://host:5000``, ``sqlite:///...``); overrides
            ``MLFLOW_TRACKING_URI`` and the default.
        experiment: MLflow experiment name (created when absent).
        registered_model_name: name the fitted detector is registered under (None: not
            registered).
        alias: registry alias moved to a new version that passes the champion check.
    """

    work_dir: str = "mlflow-work"
    tracking_uri: str | None = None
    experiment: str = "mmgmm-spark"
    registered_model_name: str | None = "mmgmm-anomaly-detector"
    alias: str = "champion"

    def resolved_uri(self) -> str:
        """The tracking URI this config selects (see the module docstring)."""
        if self.tracking_uri:
            return self.tracking_uri
        from_env = os.environ.get("MLFLOW_TRACKING_URI")
        if from_env:
            return from_env
        return "sqlite:///" + str(Path(self.work_dir).resolve() / "mlflow.db")

    def is_default_store(self) -> bool:
        return not self.tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI")

    def client(self) -> MlflowClient:
        uri = self.resolved_uri()
        return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(config: TrackingConfig) -> str:
    """Experiment id of ``config.experiment``, created (with local artifacts) if absent."""
    client = config.client()
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(config.experiment,
                                    artifact_location=_local_artifacts(config.resolved_uri()))


def _local_artifacts(uri: str) -> str | None:
    """``mlartifacts/`` beside a SQLite store's file (MLflow's own default is ``./mlruns`` of
    the current directory); None for servers, which choose their artifact store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        return None
    return (Path(uri[len(prefix):]).resolve().parent / "mlartifacts").as_uri()


@contextlib.contextmanager
def tracking(config: TrackingConfig) -> Iterator[str]:
    """Point MLflow's fluent API at ``config``'s store and experiment; restore on exit.

    Yields the experiment id. (MLflow mirrors the URIs into environment variables for
    subprocesses; those are restored too.)
    """
    if config.is_default_store():
        os.makedirs(config.work_dir, exist_ok=True)
    experiment_id = ensure_experiment(config)
    uri = config.resolved_uri()
    saved_env = {key: os.environ.get(key) for key in _URI_VARIABLES}
    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_registry = mlflow.get_registry_uri() if previous else None
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield experiment_id
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous_registry)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
