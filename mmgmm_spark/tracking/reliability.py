"""Unattended jobs: checkpointed/resumable fits, bounded retries, and never losing a model.

* :func:`fit_with_checkpoints` / :func:`resume_fit`: a fit (in memory or on Spark) writing a
  checkpoint after every EM iteration, and its continuation from the last completed iteration
  after the driver died; the resumed fit ends equal to an uninterrupted one.
* :class:`RetryPolicy` / :func:`call_with_retry`: bounded exponential backoff for calls to
  the tracking server.
* :func:`save_unlogged`: when logging still fails, the detector is saved locally (arrays +
  JSON) under ``<work_dir>/unlogged/<timestamp>``; :class:`ModelNotLoggedError` names it.
* :func:`train`: the ``mmgmm train [--resume RUN_ID]`` job as one library function.
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
from typing import TYPE_CHECKING, Any, TypeVar

from mmgmm_spark.core.batch import batch_from_arrays
from mmgmm_spark.core.em import IterationCallback
from mmgmm_spark.core.stats import accumulate_stats
from mmgmm_spark.io.checkpoints import Checkpoint, Checkpointer, load_checkpoint, resumable_fit_em
from mmgmm_spark.models.mixture import MultimodalGaussianMixture, _is_spark_dataframe, log_iteration

if TYPE_CHECKING:

    from mmgmm_spark.models.detector import AnomalyDetector

log = logging.getLogger(__name__)
T = TypeVar("T")

UNLOGGED_DIR = "unlogged"
CHECKPOINT_DIR = "checkpoints"


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


NO_RETRY = RetryPolicy(attempts=1)


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


# -------------------------------------------------------------- checkpointed fitting
def fit_with_checkpoints(model: MultimodalGaussianMixture, data: Any, checkpointer: Checkpointer,
                         *, resume: Checkpoint | None = None,
                         on_iteration: IterationCallback | None = log_iteration,
                         **spark_options: Any) -> MultimodalGaussianMixture:
    """Fit ``model`` writing a checkpoint after every EM iteration (optionally resuming).

    Args:
        data: dict of (n, d_m) arrays, a Spark DataFrame, or cached blocks.
        checkpointer: where and how checkpoints are written.
        resume: a checkpoint (validated for ``model``) to continue from.
        spark_options: as for :func:`mmgmm_spark.spark.fit.fit_dataframe`.
    """
    model._check_hyperparameters()
    if _is_spark_dataframe(data) or type(data).__name__ == "CachedBlocks":
        from mmgmm_spark.spark.fit import fit_cached, fit_dataframe

        fit = fit_dataframe if _is_spark_dataframe(data) else fit_cached
        return fit(model, data, on_iteration=on_iteration, checkpointer=checkpointer,
                   resume=resume, **spark_options)
    batch = batch_from_arrays(data, model.modalities)
    rng = model._random_state()
    if resume is not None:
        resume.restore_rng(rng)
    checkpointer.rng = rng
    result = resumable_fit_em(
        model, lambda _: model.initial_params(batch, rng),
        lambda params: accumulate_stats(batch, params, model.modalities), on_iteration,
        checkpointer=checkpointer, resume=resume)
    return model.set_result(result, batch.n_rows)


def resume_fit(model: MultimodalGaussianMixture, data: Any, checkpoint: str | Checkpoint, *,
               checkpoint_dir: str | None = None,
               on_iteration: IterationCallback | None = log_iteration,
               **spark_options: Any) -> MultimodalGaussianMixture:
    """Continue an interrupted fit from its checkpoint; it ends equal to an uninterrupted fit.

    Args:
        model: an unfitted estimator with the same modalities and hyperparameters.
        data: the same rows as the interrupted fit (dict of arrays or Spark DataFrame).
        checkpoint: a checkpoint file/directory, or a loaded :class:`Checkpoint`.
        checkpoint_dir: where to keep writing checkpoints (default: the checkpoint's own).
    """
    loaded = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(
        checkpoint, model)
    directory = checkpoint_dir or os.path.dirname(loaded.path)
    log.info("Resuming restart %d after iteration %d from %s", loaded.progress.restart,
             loaded.iterations, loaded.path)
    return fit_with_checkpoints(model, data, Checkpointer(directory, model, loaded.run_id),
                                resume=loaded, on_iteration=on_iteration, **spark_options)
