"""Model selection by BIC: every candidate a nested run, the winner recorded on the parent."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np

from mmgmm_spark.core.drift import DriftReference
from mmgmm_spark.core.errors import ConfigError
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.models.fusion import EARLY, FUSION_PARAM, Preprocessing
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.spark.data import CachedBlocks, cached_blocks
from mmgmm_spark.tracking import plots
from mmgmm_spark.tracking.config import TrackingConfig, tracking
from mmgmm_spark.tracking.drift import log_reference
from mmgmm_spark.tracking.fit import (
    CACHE_OPTIONS,
    FitRun,
    in_memory_reference,
    register_detector,
    table_params,
    thresholded_on_spark,
    tracked_fit,
    transformed_rows,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One fitted configuration: K, {modality: covariance type}, the preprocessing (its
    :meth:`Preprocessing.label`, "" for none), its BIC, nested run and fit."""

    n_components: int
    covariance_types: dict[str, str]
    bic: float
    run_id: str
    preprocessing: str = ""
    fit: FitRun | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> str:
        """Metric-name-safe configuration label, e.g. ``image-full_text-diag``."""
        covariances = "_".join(f"{name}-{cov}" for name, cov in self.covariance_types.items())
        return f"{covariances}/{self.preprocessing}" if self.preprocessing else covariances

    @property
    def label(self) -> str:
        return describe(self.covariance_types, self.preprocessing)


def describe(covariance_types: Mapping[str, str], preprocessing: str = "") -> str:
    """A configuration as text, e.g. ``image:full,text:diag standardise-true_projection-8``."""
    covariances = ",".join(f"{name}:{cov}" for name, cov in covariance_types.items())
    return f"{covariances} {preprocessing}" if preprocessing else covariances


@dataclass
class SweepResult:
    """The parent run, all candidates, and the winner (lowest BIC) with its registration.

    ``best_fit`` is the winner's fit; when registered, its ``run_id`` is the parent run's,
    where the model is logged (the nested run is ``best.run_id``).
    """

    run_id: str
    candidates: list[Candidate]
    best: Candidate
    best_fit: FitRun


def check_covariance_names(configurations: Sequence[Mapping[str, str]],
                           names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` when a covariance configuration names a modality that is
    not one of the mixture's ``names``."""
    unknown = sorted({name for c in configurations for name in c} - set(names))
    if unknown:
        raise ConfigError(
            f"model.sweep.covariance_types names {', '.join(map(repr, unknown))}, which is not "
            f"a modality of the mixture {list(names)}; use the mixture's modality names (under "
            f"model.fusion early the mixture has one block, '{EARLY}').")


def _with_covariances(modalities: Sequence[Modality],
                      covariance_types: Mapping[str, str]) -> list[Modality]:
    check_covariance_names([covariance_types], [m.name for m in modalities])
    return [dataclasses.replace(m, covariance_type=covariance_types.get(m.name,
                                                                        m.covariance_type))
            for m in modalities]


def select_model(data: Any, modalities: Sequence[Modality], n_components: Sequence[int], *,
                 covariance_types: Sequence[Mapping[str, str]] | None = None,
                 contamination: float = 0.01, config: TrackingConfig | None = None,
                 table_versions: Mapping[str, Any] | None = None,
                 holdout: Mapping[str, np.ndarray] | None = None, register: bool = True,
                 run_name: str = "model-selection", model_options: Mapping[str, Any] | None = None,
                 preprocessing: Preprocessing | Sequence[Preprocessing] | None = None,
                 **spark_options: Any) -> SweepResult:
    """Fit every (preprocessing, covariance configuration, K) and keep the lowest BIC.

    Args:
        data: as for :func:`tracked_fit`; a Spark DataFrame is cached once for all candidates.
        modalities: the modalities (their covariance types are the default configuration).
        n_components: the K values to try.
        covariance_types: configurations to try, each {modality name: covariance type}
            (modalities not named keep theirs); default: the modalities as given.
        model_options: other :class:`MultimodalGaussianMixture` arguments (tol, max_iter,
            n_init, random_state...), shared by every candidate.
        register: log the winner's detector on the parent run, register it and run the
            champion check (see :func:`tracked_fit`).
        preprocessing: fitted preprocessing in front of every candidate (see
            :func:`tracked_fit`), or several to choose among (their BICs are all of the
            input rows' density); ``modalities`` are then the input modalities. On Spark the
            transformed rows of each are cached once for all its candidates.
    """
    config = config or TrackingConfig()
    configurations = [dict(c) for c in (covariance_types or [{}])]
    fronts = ([preprocessing] if isinstance(preprocessing, Preprocessing)
              else list(preprocessing or [None]))
    variants = [(front, [_with_covariances(_mixture_modalities(modalities, front), c)
                         for c in configurations]) for front in fronts]
    fit_options = {"contamination": contamination, "config": config,
                   "table_versions": table_versions, **spark_options}
    with _inputs(data, modalities, spark_options) as data, tracking(config) as experiment_id, \
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as parent:
        params, tags = table_params(table_versions or {})
        mlflow.log_params({"sweep.n_components": ",".join(map(str, n_components)),
                           "sweep.n_configurations": len(configurations) * len(fronts),
                           **params, **_preprocessing_params(fronts)})
        mlflow.set_tags(tags)
        candidates = [candidate for front, mixture_variants in variants
                      for candidate in _fit_candidates(
                          data, front, len(fronts) > 1, mixture_variants, n_components,
                          dict(model_options or {}), fit_options)]
        best = min(candidates, key=lambda c: c.bic)
        reference = _set_threshold(best.fit, data, contamination)
        _log_winner(best, candidates)
        log_reference(reference)
        best_fit = best.fit
        if register:            # the model is logged on the parent run
            best_fit = dataclasses.replace(best_fit, run_id=parent.info.run_id)
            best_fit.model_uri, best_fit.model_version, best_fit.decision = (
                register_detector(config, best_fit.detector, _sample(best_fit, data), holdout,
                                  parent.info.run_id))
        return SweepResult(parent.info.run_id, candidates, best, best_fit)


@contextlib.contextmanager
def _inputs(data: Any, modalities: Sequence[Modality], spark_options: dict[str, Any]
            ) -> Iterator[Any]:
    """In-memory data as it is; Spark rows cached once for every candidate (the cache
    options are taken out of ``spark_options``)."""
    if isinstance(data, Mapping):
        yield data
        return
    cache = {key: spark_options.pop(key) for key in CACHE_OPTIONS if key in spark_options}
    with cached_blocks(data, tuple(modalities), **cache) as cached:
        yield cached


def _fit_candidates(data: Any, front: Preprocessing | None, labelled: bool,
                    mixture_variants: list[list[Modality]], n_components: Sequence[int],
                    model_options: dict[str, Any], fit_options: dict[str, Any]
                    ) -> list[Candidate]:
    """One nested run per (covariance configuration, K) behind one preprocessing."""
    label = front.label() if front is not None and labelled else ""
    candidates = []
    with _transformed(data, front) as transformed:
        for mods in mixture_variants:
            resolved = {m.name: m.covariance_type for m in mods}
            for k in n_components:
                fit = tracked_fit(
                    MultimodalGaussianMixture(mods, k, **model_options), data, log_model=False,
                    nested=True, run_name=f"K={k} {describe(resolved, label)}",
                    preprocessing=front, transformed=transformed, threshold=False,
                    **fit_options)
                candidates.append(Candidate(k, resolved, fit.metrics["bic"], fit.run_id, label,
                                            fit))
    return candidates


def _log_winner(best: Candidate, candidates: list[Candidate]) -> None:
    """The winner's params, every candidate's BIC and the BIC curve, on the parent run."""
    log.info("Sweep: lowest BIC %.1f with K=%d, %s", best.bic, best.n_components, best.label)
    mlflow.log_params({"best_n_components": best.n_components,
                       "best_covariance_types": describe(best.covariance_types),
                       "best_run_id": best.run_id,
                       **({"best_preprocessing": best.preprocessing}
                          if best.preprocessing else {})})
    mlflow.log_metrics({"best_bic": best.bic, "threshold": best.fit.detector.threshold,
                        **{f"bic/K{c.n_components}/{c.key}": c.bic for c in candidates}})
    figure = plots.bic_curve([(c.n_components, c.label, c.bic) for c in candidates],
                             (best.n_components, best.label))
    mlflow.log_figure(figure, "plots/bic_vs_k.png")
    plt.close(figure)


def _set_threshold(fit: FitRun, data: Any, contamination: float) -> DriftReference:
    """The winner's exact training threshold and calibration table (the candidates were
    fitted without them) and its drift reference (stored with the registered model)."""
    detector = fit.detector
    if isinstance(data, CachedBlocks):
        _, thresholded, _, reference = thresholded_on_spark(detector.model, data,
                                                            contamination)
        detector.threshold, detector.calibration = (thresholded.threshold,
                                                    thresholded.calibration)
        return reference
    batch = detector.model.to_batch(data)
    detector.set_threshold(-detector.model.score_samples(data), detector.patterns(batch))
    return in_memory_reference(detector, batch)


def _mixture_modalities(modalities: Sequence[Modality],
                        preprocessing: Preprocessing | None) -> list[Modality]:
    return list(modalities) if preprocessing is None else preprocessing.mixture_modalities()


def _preprocessing_params(fronts: list[Preprocessing | None]) -> dict[str, Any]:
    """The parent run's preprocessing params: the one used, or the labels of those tried."""
    if fronts == [None]:
        return {}
    if len(fronts) == 1:
        return fronts[0].params()
    return {FUSION_PARAM: fronts[0].strategy,
            "sweep.preprocessing": ";".join(front.label() for front in fronts)}


@contextlib.contextmanager
def _transformed(data: Any, preprocessing: Preprocessing | None) -> Iterator[Any]:
    """Cached transformed rows of cached ``data`` for the candidates of ``preprocessing``
    (None in memory or without preprocessing), unpersisted afterwards."""
    if preprocessing is None or not isinstance(data, CachedBlocks):
        yield None
        return
    transformed = transformed_rows(data, preprocessing, preprocessing.mixture_modalities())
    try:
        yield transformed
    finally:
        if transformed is not None:
            transformed.unpersist()


def _sample(fit: FitRun, data: Any):
    """A few rows for the input example."""
    if isinstance(data, CachedBlocks):
        return data.sample(100, seed=0)
    return fit.detector.model.to_batch({name: np.asarray(v)[:100] for name, v in data.items()})
