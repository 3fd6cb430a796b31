"""The ``late`` fusion strategy on Spark as one MLflow run: a nested fit per modality.

Each modality's mixture is fitted (with its preprocessing) on the cached rows that observe
it, as a nested run of its own (per-iteration metrics, plots). The parent run assembles the
``late`` :class:`mmgmm_spark.models.fusion.FusionModel` from the nested fits' mixtures and their
log-likelihood means and standard deviations, takes the exact training threshold of the fused
score over all rows, and logs, registers and champion-checks that detector.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import mlflow
import numpy as np

from mmgmm_spark.models.fusion import LatePart, Preprocessing, late_model, observing
from mmgmm_spark.models.mixture import MultimodalGaussianMixture, information_criteria
from mmgmm_spark.spark.data import CachedBlocks
from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.drift import log_reference
from mmgmm_spark.tracking.fit import (
    FitRun,
    log_figures,
    mlflow_run,
    model_params,
    register_detector,
    score_figures,
    table_params,
    thresholded_on_spark,
    tracked_fit,
)
from mmgmm_spark.tracking.reliability import (
    ModelNotLoggedError,
    RetryPolicy,
    call_with_retry,
    save_unlogged,
)


def tracked_late_fit(models: Mapping[str, MultimodalGaussianMixture], data: CachedBlocks,
                     preprocessing: Preprocessing, *, contamination: float = 0.01,
                     config: TrackingConfig | None = None,
                     table_versions: Mapping[str, Any] | None = None,
                     holdout: Mapping[str, np.ndarray] | None = None,
                     run_name: str = "late-fusion", retry: RetryPolicy | None = None,
                     **spark_options: Any) -> FitRun:
    """Fit one mixture per modality, track everything, log and register the ``late`` detector.

    Args:
        models: {modality: unfitted one-modality mixture of its transformed rows
            (``preprocessing.for_modality(name).mixture_modalities()``)}.
        data: the cached input rows (all modalities; not unpersisted here).
        preprocessing: fitted preprocessing of every modality, strategy ``late``.
        contamination, config, table_versions, holdout, retry: as for :func:`tracked_fit`.
        spark_options: ``tree_depth``, ``init_sample_rows`` for every nested fit.

    Returns:
        The parent run's :class:`FitRun` (BIC and mean log-likelihood of the density of
        independent modalities that ``late`` assumes; the threshold of the fused score).
    """
    config = config or TrackingConfig()
    retry = retry or RetryPolicy()
    params = _late_params(models, preprocessing, contamination)
    with tracking(config) as experiment_id, mlflow_run(experiment_id, run_name, False,
                                                        None) as run:
        run_id = run.info.run_id
        versions, tags = table_params(table_versions or {})
        call_with_retry(lambda: (mlflow.log_params({**params, **versions}),
                                 mlflow.set_tags(tags)), retry, "Logging run parameters")
        fits = {name: _fit_modality(name, model, data, preprocessing, contamination, config,
                                    table_versions, retry, spark_options)
                for name, model in models.items()}
        parts = {name: LatePart(fit.detector.model, fit.metrics["final_mean_log_likelihood"],
                                fit.metrics["final_log_likelihood_std"])
                 for name, fit in fits.items()}
        fused = late_model(preprocessing, parts, data.total_weight)
        scores, detector, sample, reference = thresholded_on_spark(fused, data, contamination)
        metrics = _late_metrics(fits, data.total_weight, scores.threshold)
        result = FitRun(run_id, detector, data.total_weight, metrics)
        try:
            call_with_retry(lambda: (mlflow.log_params({"n_rows": data.total_weight,
                                                        "data_path": "spark"}),
                                     mlflow.log_metrics(metrics),
                                     log_figures(score_figures(detector, sample)),
                                     log_reference(reference)),
                            retry, "Logging final metrics")
            result.model_uri, result.model_version, result.decision = call_with_retry(
                lambda: register_detector(config, detector, sample, holdout, run_id),
                retry, "Logging the model")
        except Exception as error:
            path = save_unlogged(detector, config.work_dir, run_id,
                                 {"metrics": metrics, "params": params})
            raise ModelNotLoggedError(path, run_id, error) from error
        return result


def _late_params(models: Mapping[str, MultimodalGaussianMixture], preprocessing: Preprocessing,
                 contamination: float) -> dict[str, Any]:
    """Every mixture's modality and EM settings (shared ones once) and the preprocessing."""
    params: dict[str, Any] = {}
    for model in models.values():
        params.update(model_params(model, contamination))
    params["modalities"] = ",".join(models)
    return {**params, **preprocessing.params()}


def _fit_modality(name: str, model: MultimodalGaussianMixture, data: CachedBlocks,
                  preprocessing: Preprocessing, contamination: float, config: TrackingConfig,
                  table_versions: Mapping[str, Any] | None, retry: RetryPolicy,
                  spark_options: Mapping[str, Any]) -> FitRun:
    """The nested run of modality ``name``'s mixture, on the cached rows observing it."""
    single = preprocessing.for_modality(name)
    rows = data.mapped(observing(name), single.modalities,
                       f"{data.source} (late fusion: the rows observing '{name}')")
    try:
        return tracked_fit(model, rows, contamination=contamination, config=config,
                           table_versions=table_versions, log_model=False, nested=True,
                           run_name=f"late: {name}", preprocessing=single, retry=retry,
                           threshold=False, **spark_options)
    finally:
        rows.unpersist()


def _late_metrics(fits: Mapping[str, FitRun], n_rows: float, threshold: float
                  ) -> dict[str, float]:
    """Mean log-likelihood (sum of each modality's over the rows observing it, per row; rows
    counted by their weights), BIC/AIC with every mixture's parameters, and the fused
    score's threshold."""
    total = sum(fit.n_rows * fit.metrics["final_mean_log_likelihood"] for fit in fits.values())
    n_parameters = int(sum(fit.metrics["n_parameters"] for fit in fits.values()))
    return {"final_mean_log_likelihood": total / n_rows,
            **information_criteria(total / n_rows, n_rows, n_parameters),
            "n_parameters": float(n_parameters), "threshold": float(threshold)}
