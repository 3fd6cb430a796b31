"""Unattended jobs: bounded retries of tracking calls, and never losing a model.

(Checkpointed and resumed fits are ``MultimodalGaussianMixture.fit(..., checkpointer=,
resume=)`` and :func:`mmgmm_spark.models.mixture.resume_fit`.)

* :class:`RetryPolicy` / :func:`call_with_retry`: bounded exponential backoff for calls to
  the tracking server.
* :func:`save_unlogged`: when logging still fails, the detector is saved locally (arrays +
  JSON) under ``<work_dir>/unlogged/<timestamp>``; :class:`ModelNotLoggedError` names it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from mmgmm_spark.models.detector import AnomalyDetector

log = logging.getLogger(__name__)
T = TypeVar("T")

UNLOGGED_DIR = "unlogged"


# ----------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` calls, waiting ``initial_delay * factor**i``
    (at most ``max_delay``, with +-25% jitter) between them."""

    attempts: int = 4
    initial_delay: float = 0.5
    factor: float = 2.0
    max_delay: float = 8.0

    def delays(self) -> list[float]:
        """The waits between attempts (``attempts - 1`` of them)."""
        return [min(self.max_delay, self.initial_delay * self.factor ** i)
                for i in range(max(self.attempts - 1, 0))]


def is_transient(error: BaseException) -> bool:
    """Worth retrying: connection/timeout/OS errors, HTTP 5xx/429, or MLflow's internal errors.

    MLflow's client errors (invalid parameter, not found, already exists) are permanent.
    """
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(error, ConnectionError | TimeoutError | OSError) or (
        type(error).__module__.split(".")[0] in ("requests", "urllib3", "sqlalchemy"))


def call_with_retry(function: Callable[[], T], policy: RetryPolicy, what: str,
                    sleep: Callable[[float], None] = time.sleep) -> T:
    """``function()``, retried on transient errors per ``policy``; the last error is raised."""
    delays = policy.delays()
    for attempt in range(len(delays) + 1):
        try:
            return function()
        except Exception as error:
            if attempt == len(delays) or not is_transient(error):
                raise
            wait = delays[attempt] * random.uniform(0.75, 1.25)
            log.warning("%s failed (attempt %d of %d), retrying in %.1f s: %s", what,
                        attempt + 1, policy.attempts, wait, error)
            sleep(wait)
    raise AssertionError("unreachable")


# -------------------------------------------------------------------- unlogged models
class ModelNotLoggedError(RuntimeError):
    """The fit finished but the tracking server did not take the model; it is saved locally.

    Attributes:
        path: directory of the saved detector (``AnomalyDetector.load(path)``).
        run_id: the MLflow run of the fit.
    """

    def __init__(self, path: str, run_id: str | None, cause: BaseException) -> None:
        super().__init__(
            f"The fitted model could not be logged to MLflow (run {run_id}): {cause}. It was "
            f"saved locally at {path} (load with AnomalyDetector.load({path!r}); metadata in "
            f"{os.path.join(path, 'run.json')}).")
        self.path = path
        self.run_id = run_id


def save_unlogged(detector: AnomalyDetector, work_dir: str, run_id: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> str:
    """Save ``detector`` to ``<work_dir>/unlogged/<UTC timestamp>[-<run>]``; return the path.

    The directory holds the detector (arrays + JSON, :meth:`AnomalyDetector.save`) and
    ``run.json`` (run id and ``metadata``, e.g. the final metrics) to log it later.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"{stamp}-{run_id[:12]}" if run_id else stamp
    path = os.path.abspath(os.path.join(work_dir, UNLOGGED_DIR, name))
    detector.save(path)
    with open(os.path.join(path, "run.json"), "w") as f:
        json.dump({"run_id": run_id, **(metadata or {})}, f, indent=2, default=str)
    return path
