"""Fusion strategies for multimodal anomaly detection, with per-modality preprocessing.

Three ways to turn several feature blocks into one anomaly score, from one configuration
(:class:`FusionConfig`) and one estimator (:class:`FusionModel`):

``joint``
    The block-diagonal multimodal mixture (:class:`MultimodalGaussianMixture`): components
    are products of per-modality Gaussians; a row missing a modality marginalises it out.
``early``
    All (preprocessed) modalities concatenated into one block with one covariance (full by
    default), the scikit-learn approach. Fitted on the rows that observe every modality; a
    row missing a modality is scored by the exact Gaussian marginal over its observed
    coordinates.
``late``
    One mixture per modality. Each modality's log-likelihood is standardised by its training
    mean and standard deviation; the fused value is the mean over the modalities the row
    observes.

Every modality is optionally standardised and, when wide, projected by PCA
(:mod:`mmgmm_spark.core.preprocessing`); the discarded directions stay in the density as
isotropic noise and the Jacobians are included, so ``log_likelihood`` of ``joint`` and
``early`` is a log-density of the input rows. The number of components K, the covariance
type, whether to standardise and (optionally) the projection size q are chosen by BIC over a
small grid: labels are never used.

Output columns of :meth:`FusionModel.columns` per strategy:

============================ ================================ ================================
column                       joint / early                    late
============================ ================================ ================================
log_likelihood               log p(row) (input units,         mean over observed modalities of
                             PCA residual included)           (ll_m - mean_m) / std_m (unitless)
cluster                      most probable component          most probable component of the
                                                              first observed modality's mixture
<modality>_log_likelihood    marginal log-density of the      that modality's own mixture
                             modality's block (NaN: missing)  log-density (NaN: missing)
============================ ================================ ================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from itertools import product
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, Block, batch_from_arrays
from mmgmm_spark.core.densities import Centred, log_gaussian_density, logsumexp_rows
from mmgmm_spark.core.modality import COVARIANCE_TYPES, Modality, check_modalities
from mmgmm_spark.core.params import (
    DegenerateComponentError,
    DegenerateComponentWarning,
    GaussianBlock,
)
from mmgmm_spark.core.preprocessing import ModalityPreprocessor, Moments, preprocess_batch
from mmgmm_spark.models.mixture import (
    MultimodalGaussianMixture,
    NotFittedError,
    load_model,
    save_model,
)

log = logging.getLogger(__name__)

STRATEGIES = ("joint", "early", "late")
EARLY = "early"
"""Name of the single concatenated modality of the ``early`` strategy's mixture."""
JOINT = "joint"
FORMAT = "mmgmm-spark-fusion/1"
FUSION_JSON = "fusion.json"
PREPROCESSING = "preprocessing.npz"

ArrayData = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class FusionConfig:
    """Everything that defines a fused detector except the data.

    Attributes:
        strategy: "joint", "early" or "late".
        n_components: grid of K; the lowest-BIC admissible fit is kept.
        covariance_types: grid of covariance types (each of "full", "tied", "diag",
            "spherical"), searched with K.
        projection: per-modality q: "auto" (see
            :func:`mmgmm_spark.core.preprocessing.auto_n_components`), an int, or None (none).
        projection_grid: optional q values searched by BIC instead of ``projection``
            (the same q for every modality, capped at its width).
        standardise: standardise every feature before anything else: True, False, or
            "auto": a modality that is projected by PCA is tried both ways and BIC chooses
            (PCA depends on the scales; embeddings' raw scales often carry information); one
            that is not projected is standardised.
        whiten: scale projected coordinates to unit variance.
        residual: keep the PCA reconstruction error in the density (isotropic noise).
        variance: explained-variance target of the "auto" projection.
        rows_per_dim: the "auto" projection keeps at most n / rows_per_dim components.
        min_weight: candidates with a component weight below this are not admissible
            (K = 1 always is): a tiny component tends to model a cluster of anomalies.
        reg_covar, max_iter, tol, n_init, init_params, random_state: EM settings.
    """

    strategy: str = "joint"
    n_components: tuple[int, ...] = (1, 2, 3)
    covariance_types: tuple[str, ...] = ("full",)
    projection: int | str | None = "auto"
    projection_grid: tuple[int, ...] | None = None
    standardise: bool | str = "auto"
    whiten: bool = True
    residual: bool = True
    variance: float = 0.95
    rows_per_dim: int = 10
    min_weight: float = 0.1
    reg_covar: float = 1e-3
    max_iter: int = 200
    tol: float = 1e-3
    n_init: int = 1
    init_params: str = "kmeans"
    random_state: int | None = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}.")
        if not self.n_components or any(int(k) < 1 for k in self.n_components):
            raise ValueError(f"n_components must be a non-empty grid of K >= 1, "
                             f"got {self.n_components!r}.")
        bad = [c for c in self.covariance_types if c not in COVARIANCE_TYPES]
        if not self.covariance_types or bad:
            raise ValueError(f"covariance_types must be a non-empty subset of "
                             f"{COVARIANCE_TYPES}, got {self.covariance_types!r}.")
        if self.standardise not in (True, False, "auto"):
            raise ValueError(f"standardise must be true, false or 'auto', "
                             f"got {self.standardise!r}.")
        if not (self.projection is None or self.projection == "auto"
                or (isinstance(self.projection, int) and self.projection >= 1)):
            raise ValueError(f"projection must be 'auto', None or an int >= 1, "
                             f"got {self.projection!r}.")

    def preprocessor_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`ModalityPreprocessor.fit` set by this config."""
        return {"whiten": self.whiten, "residual": self.residual, "variance": self.variance,
                "rows_per_dim": self.rows_per_dim}

    def to_dict(self) -> dict:
        out = asdict(self)
        out["n_components"] = list(self.n_components)
        out["covariance_types"] = list(self.covariance_types)
        if self.projection_grid is not None:
            out["projection_grid"] = list(self.projection_grid)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FusionConfig:
        d = dict(d)
        for key in ("n_components", "covariance_types", "projection_grid"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


@dataclass
class Candidate:
    """One fitted point of the selection grid (``mixture`` is dropped once selection ends)."""

    n_components: int
    covariance_type: str
    standardise: bool
    projection: dict[str, int]
    bic: float
    min_weight: float
    admissible: bool
    mixture: MultimodalGaussianMixture | None = field(default=None, repr=False)
    preprocessors: dict[str, ModalityPreprocessor] | None = field(default=None, repr=False)

    def summary(self) -> dict:
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "standardise": self.standardise, "projection": self.projection, "bic": self.bic,
                "min_weight": self.min_weight, "admissible": self.admissible}


class FusionModel:
    """Preprocessing + a fusion strategy + its mixture(s), fitted and scored as one model.

    Args:
        modalities: the input feature blocks (their ``covariance_type`` is ignored: the
            config's grid decides; their ``weight`` is the fusion weight of ``joint``).
        config: a :class:`FusionConfig`.
        mixture_options: extra keyword arguments for every
            :class:`MultimodalGaussianMixture` (e.g. ``weights_init``); not saved.
    """

    def __init__(self, modalities: list[Modality], config: FusionConfig | None = None,
                 mixture_options: dict[str, Any] | None = None) -> None:
        self.modalities = check_modalities(modalities)
        self.config = config or FusionConfig()
        self.mixture_options = dict(mixture_options or {})
        self.preprocessors_: dict[str, ModalityPreprocessor] = {}
        self.mixtures_: dict[str, MultimodalGaussianMixture] = {}
        self.late_stats_: dict[str, tuple[float, float]] = {}
        self.selection_: dict[str, list[dict]] = {}
        self.n_train_rows_ = 0
        self.extra_: dict[str, Any] = {}

    @property
    def strategy(self) -> str:
        return self.config.strategy

    # ----------------------------------------------------------------------------- fitting
    def fit(self, data: ArrayData) -> FusionModel:
        """Fit preprocessing and mixture(s) on a dict of (n, d_m) arrays (NaN rows = missing)."""
        batch = self.to_batch(data)
        dense = _dense(batch)
        self.n_train_rows_ = batch.n_rows
        if self.strategy == "late":
            for m in self.modalities:
                rows = batch.blocks[m.name].observed
                chosen = self._select([m], {m.name: dense[m.name][rows]}, m.name)
                self.preprocessors_[m.name] = chosen.preprocessors[m.name]
                self.mixtures_[m.name] = chosen.mixture
            self.late_stats_ = {}
            values, _ = self._late_log_likelihoods(dense)
            for name, column in values.items():
                observed = column[~np.isnan(column)]
                self.late_stats_[name] = (float(observed.mean()),
                                          float(max(observed.std(), 1e-12)))
        else:
            train = dense
            if self.strategy == "early":
                complete = batch.complete_rows()
                train = {name: x[complete] for name, x in dense.items()}
            key = JOINT if self.strategy == "joint" else EARLY
            chosen = self._select(list(self.modalities), train, key)
            self.preprocessors_ = chosen.preprocessors
            self.mixtures_ = {key: chosen.mixture}
        return self

    def _select(self, modalities: list[Modality], data: dict[str, np.ndarray],
                key: str) -> Candidate:
        """Fit every grid point on ``data`` and return the admissible one with lowest BIC."""
        candidates = []
        grid = self.config.projection_grid or (self.config.projection,)
        standardise = self.config.standardise
        for scaled, q in product((True, False) if standardise == "auto" else (standardise,),
                                 grid):
            preprocessors = {m.name: self._preprocessor(data[m.name], q, scaled)
                             for m in modalities}
            if standardise == "auto" and not scaled and all(
                    p.output_dim == p.input_dim for p in preprocessors.values()):
                continue            # nothing projected: the standardised candidates cover it
            projected = {name: p.transform(data[name]) for name, p in preprocessors.items()}
            residual = _residual_sum(preprocessors, data, modalities)
            for covariance_type in self.config.covariance_types:
                for k in self.config.n_components:
                    candidate = self._fit_candidate(modalities, preprocessors, projected,
                                                    residual, int(k), covariance_type, scaled)
                    if candidate is not None:
                        candidates.append(candidate)
        admissible = [c for c in candidates if c.admissible]
        if not admissible:
            raise DegenerateComponentError(
                f"No admissible mixture for '{key}' in the grid K={self.config.n_components}, "
                f"covariance_types={self.config.covariance_types}: raise reg_covar.")
        best = min(admissible, key=lambda c: c.bic)
        self.selection_[key] = [c.summary() for c in candidates]
        return best

    def _preprocessor(self, x: np.ndarray, q: int | str | None,
                      standardise: bool) -> ModalityPreprocessor:
        c = self.config
        q = _capped(q, x.shape[1])
        options = c.preprocessor_options()
        fitted = ModalityPreprocessor.fit(x, q, standardise=standardise, **options)
        if not standardise and c.standardise == "auto" and fitted.output_dim == x.shape[1]:
            # Without a projection, raw scales only change the k-means start of a full
            # mixture, not the model: BIC would merely pick a start, so standardise.
            fitted = ModalityPreprocessor.fit(x, q, standardise=True, **options)
        return fitted

    def _fit_candidate(self, modalities: list[Modality],
                       preprocessors: dict[str, ModalityPreprocessor],
                       projected: dict[str, np.ndarray], residual: np.ndarray, k: int,
                       covariance_type: str, standardise: bool) -> Candidate | None:
        mixture_modalities, mixture_data = self._mixture_inputs(modalities, preprocessors,
                                                                projected, covariance_type)
        c = self.config
        mixture = MultimodalGaussianMixture(
            mixture_modalities, k, tol=c.tol, reg_covar=c.reg_covar, max_iter=c.max_iter,
            n_init=c.n_init, init_params=c.init_params, random_state=c.random_state,
            **self.mixture_options)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mixture.fit(mixture_data, on_iteration=None)
        except (DegenerateComponentError, ValueError) as e:
            log.info("Skipping K=%d %s: %s", k, covariance_type, e)
            return None
        n = len(residual)
        log_likelihood = float(mixture.score_samples(mixture_data).sum() + residual.sum())
        n_params = mixture.n_parameters() + sum(p.n_parameters() for p in preprocessors.values())
        bic = -2.0 * log_likelihood + n_params * np.log(n)
        smallest = float(mixture.weights_.min())
        return Candidate(k, covariance_type, standardise,
                         {name: p.output_dim for name, p in preprocessors.items()},
                         float(bic), smallest, k == 1 or smallest >= c.min_weight,
                         mixture, preprocessors)

    def _mixture_inputs(self, modalities: list[Modality],
                        preprocessors: dict[str, ModalityPreprocessor],
                        projected: dict[str, np.ndarray], covariance_type: str
                        ) -> tuple[list[Modality], dict[str, np.ndarray]]:
        if self.strategy == "early":
            dim = sum(p.output_dim for p in preprocessors.values())
            x = np.hstack([projected[m.name] for m in modalities])
            return [Modality(EARLY, dim, covariance_type)], {EARLY: x}
        out = [Modality(m.name, preprocessors[m.name].output_dim, covariance_type,
                        m.weight if self.strategy == "joint" else 1.0) for m in modalities]
        return out, projected

    # ----------------------------------------------------------------------------- scoring
    def _check_fitted(self) -> None:
        if not self.mixtures_:
            raise NotFittedError("This FusionModel is not fitted yet: call fit() or load().")

    def to_batch(self, data: ArrayData) -> Batch:
        """Validate a dict of (n, d_m) arrays against the input modalities."""
        return batch_from_arrays(data, self.modalities)

    def columns(self, data: ArrayData) -> dict[str, np.ndarray]:
        """Per row (each (n,)): log_likelihood, cluster and ``<modality>`` log-likelihoods.

        See the module docstring for what they mean under each strategy.
        """
        return self.batch_columns(self.to_batch(data))

    def batch_columns(self, batch: Batch) -> dict[str, np.ndarray]:
        """:meth:`columns` of a validated :class:`Batch`; modality keys are plain names."""
        self._check_fitted()
        dense = _dense(batch)
        if self.strategy == "late":
            return self._late_columns(dense)
        if self.strategy == "early":
            return self._early_columns(dense)
        return self._joint_columns(dense)

    def responsibilities(self, batch: Batch) -> np.ndarray:
        """(n, K) component posteriors of the ``joint`` or ``early`` mixture (``early``: of
        each row's observed coordinates). ``late`` has one mixture per modality: undefined."""
        self._check_fitted()
        if self.strategy == "late":
            raise ValueError("Responsibilities are not defined for 'late' models (one mixture "
                             "per modality); set scoring.include_responsibilities false.")
        projected = self._projected(_dense(batch))
        if self.strategy == "early":
            joint = self._early_log_prob(projected)
            return np.exp(joint - logsumexp_rows(joint)[:, None])
        return self.mixtures_[JOINT].predict_proba(projected)

    def score_samples(self, data: ArrayData) -> np.ndarray:
        """(n,) the fused log-likelihood (the negative is the anomaly score)."""
        return self.columns(data)["log_likelihood"]

    def log_density(self, data: ArrayData) -> np.ndarray:
        """(n,) log-density of the rows in input units: ``log_likelihood`` for ``joint`` and
        ``early``; for ``late`` the sum over observed modalities of their own mixtures'
        log-densities (the density of independent modalities). Comparable across strategies
        when every ``joint`` modality weight is 1 (a weight scales its modality's term)."""
        columns = self.columns(data)
        if self.strategy != "late":
            return columns["log_likelihood"]
        return np.nansum(np.stack([columns[m.name] for m in self.modalities], axis=1), axis=1)

    def score(self, data: ArrayData) -> float:
        """Mean :meth:`log_density` of the rows (what the champion check compares)."""
        return float(self.log_density(data).mean())

    def _projected(self, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: p.transform(dense[name]) for name, p in self.preprocessors_.items()}

    def _residuals(self, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: p.residual_log_density(dense[name])
                for name, p in self.preprocessors_.items()}

    def _joint_columns(self, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mixture = self.mixtures_[JOINT]
        projected, residuals = self._projected(dense), self._residuals(dense)
        total, log_resp = mixture.log_prob(projected)
        out = {"cluster": log_resp.argmax(axis=1).astype(np.int32)}
        for m in self.modalities:
            total = total + m.weight * np.nan_to_num(residuals[m.name])
        out["log_likelihood"] = total
        for name, column in mixture.modality_log_likelihoods(projected).items():
            out[name] = column + residuals[name]
        return out

    def _early_spans(self) -> dict[str, np.ndarray]:
        """{modality: its column indices in the concatenated ``early`` block}."""
        widths = [self.preprocessors_[m.name].output_dim for m in self.modalities]
        starts = np.cumsum([0, *widths])
        return {m.name: np.arange(starts[i], starts[i + 1])
                for i, m in enumerate(self.modalities)}

    def _early_log_prob(self, projected: dict[str, np.ndarray]) -> np.ndarray:
        """(n, K) log pi_k + log N_k(x) of the ``early`` mixture, each row by the exact
        marginal over the modalities it observes."""
        mixture, spans = self.mixtures_[EARLY], self._early_spans()
        x = np.hstack([projected[m.name] for m in self.modalities])
        pattern = np.stack([~np.isnan(projected[m.name]).all(axis=1) for m in self.modalities],
                           axis=1)
        out = np.empty((len(x), mixture.n_components))
        for key in np.unique(pattern, axis=0):
            rows = (pattern == key).all(axis=1)
            index = np.concatenate([spans[m.name] for m, seen in zip(self.modalities, key,
                                                                      strict=True) if seen])
            out[rows] = _marginal_log_prob(mixture, x[np.ix_(rows, index)], index)
        return out

    def _early_columns(self, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mixture, spans = self.mixtures_[EARLY], self._early_spans()
        projected, residuals = self._projected(dense), self._residuals(dense)
        joint = self._early_log_prob(projected)
        out = {"log_likelihood": logsumexp_rows(joint)
               + sum(np.nan_to_num(r) for r in residuals.values()),
               "cluster": joint.argmax(axis=1).astype(np.int32)}
        for m in self.modalities:
            x = projected[m.name]
            column = np.full(len(x), np.nan)
            rows = ~np.isnan(x).all(axis=1)
            column[rows] = logsumexp_rows(_marginal_log_prob(
                mixture, x[rows], spans[m.name])) + residuals[m.name][rows]
            out[m.name] = column
        return out

    def _late_log_likelihoods(self, dense: dict[str, np.ndarray]
                              ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each modality's own mixture log-density (n,) (NaN where missing), and (n,) the
        most probable component of the first observed modality's mixture."""
        projected, residuals = self._projected(dense), self._residuals(dense)
        out = {}
        cluster = np.full(len(next(iter(dense.values()))), -1, dtype=np.int32)
        for m in reversed(self.modalities):                 # the first observed one wins
            column = np.full(len(projected[m.name]), np.nan)
            rows = ~np.isnan(projected[m.name]).all(axis=1)
            if rows.any():
                log_likelihood, log_resp = self.mixtures_[m.name].log_prob(
                    {m.name: projected[m.name][rows]})
                column[rows] = log_likelihood + residuals[m.name][rows]
                cluster[rows] = log_resp.argmax(axis=1)
            out[m.name] = column
        return {m.name: out[m.name] for m in self.modalities}, cluster

    def _late_columns(self, dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values, cluster = self._late_log_likelihoods(dense)
        standardised = np.stack([(values[name] - mean) / std
                                 for name, (mean, std) in self.late_stats_.items()], axis=1)
        fused = np.nansum(standardised, axis=1) / (~np.isnan(standardised)).sum(axis=1)
        return {"log_likelihood": fused, "cluster": cluster, **values}

    # ---------------------------------------------------------------------------- summary
    def chosen(self) -> dict[str, dict]:
        """Per mixture (``joint``, ``early`` or each modality for ``late``): the chosen K,
        covariance type and projection sizes."""
        self._check_fitted()
        return {key: {"n_components": int(m.n_components),
                      "covariance_type": m.modalities[0].covariance_type,
                      "projection": {name: p.output_dim for name, p in
                                     self.preprocessors_.items()
                                     if key in (JOINT, EARLY) or name == key}}
                for key, m in self.mixtures_.items()}

    # ------------------------------------------------------------------------ persistence
    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """Write to directory ``path``: fusion.json, preprocessing.npz and one model directory
        per mixture (:mod:`mmgmm_spark.io.model_files`). No pickle anywhere."""
        self._check_fitted()
        os.makedirs(path, exist_ok=True)
        arrays, meta = {}, {}
        for index, m in enumerate(self.modalities):
            a, meta[m.name] = self.preprocessors_[m.name].to_arrays(f"p{index}_")
            arrays.update(a)
        np.savez(os.path.join(path, PREPROCESSING), **arrays)
        mixtures = {}
        for index, (key, mixture) in enumerate(self.mixtures_.items()):
            mixtures[key] = f"mixture_{index}"
            save_model(mixture, os.path.join(path, mixtures[key]))
        document = {"format": FORMAT, "modalities": [m.to_dict() for m in self.modalities],
                    "config": self.config.to_dict(), "preprocessing": meta,
                    "mixtures": mixtures,
                    "late_stats": {k: list(v) for k, v in self.late_stats_.items()},
                    "selection": self.selection_, "n_train_rows": int(self.n_train_rows_),
                    "extra": {**self.extra_, **(extra or {})}}
        with open(os.path.join(path, FUSION_JSON), "w") as f:
            json.dump(document, f, indent=2)

    @classmethod
    def load(cls, path: str) -> FusionModel:
        """Read a directory written by :meth:`save`, validating arrays and metadata."""
        from mmgmm_spark.io.model_files import ModelFormatError

        try:
            with open(os.path.join(path, FUSION_JSON)) as f:
                document = json.load(f)
            if document.get("format") != FORMAT:
                raise ValueError(f"not an {FORMAT} artefact")
            model = cls([Modality.from_dict(d) for d in document["modalities"]],
                        FusionConfig.from_dict(document["config"]))
            arrays = dict(np.load(os.path.join(path, PREPROCESSING), allow_pickle=False))
            for index, m in enumerate(model.modalities):
                p = ModalityPreprocessor.from_arrays(arrays, document["preprocessing"][m.name],
                                                     f"p{index}_")
                if p.input_dim != m.dim:
                    raise ValueError(f"preprocessing of '{m.name}' has width {p.input_dim}")
                model.preprocessors_[m.name] = p
            model.mixtures_ = {key: load_model(os.path.join(path, sub))
                               for key, sub in document["mixtures"].items()}
            model.late_stats_ = {k: (float(v[0]), float(v[1]))
                                 for k, v in document.get("late_stats", {}).items()}
            model.selection_ = dict(document.get("selection", {}))
            model.n_train_rows_ = int(document.get("n_train_rows", 0))
            model.extra_ = dict(document.get("extra", {}))
        except (OSError, KeyError, TypeError, ValueError) as e:
            raise ModelFormatError(f"{path} is not a valid fusion model: {e}") from None
        model._check_consistency()
        return model

    def _check_consistency(self) -> None:
        from mmgmm_spark.io.model_files import ModelFormatError

        expected = ({JOINT} if self.strategy == "joint" else {EARLY}
                    if self.strategy == "early" else {m.name for m in self.modalities})
        if set(self.mixtures_) != expected or (self.strategy == "late"
                                               and set(self.late_stats_) != expected):
            raise ModelFormatError(f"fusion artefact for '{self.strategy}' has mixtures "
                                   f"{sorted(self.mixtures_)}, expected {sorted(expected)}.")


@dataclass(frozen=True)
class Preprocessing:
    """Preprocessing fitted in front of the mixture(s) of one strategy (the Spark jobs' model).

    :class:`FusionModel` selects K and the preprocessing by BIC in memory; on Spark the jobs
    fit the preprocessing from distributed :class:`Moments` (or take the identity), then the
    mixture on the transformed rows, and :meth:`model` (``joint``, ``early``) or
    :func:`late_model` assembles the same saved/scored :class:`FusionModel`.

    Attributes:
        modalities: the input modalities (raw widths; covariance type and weight are the
            mixture's).
        preprocessors: {modality: fitted :class:`ModalityPreprocessor`}.
        config: its strategy, standardise (True/False), projection and preprocessing options
            were used; it is saved with the model.
    """

    modalities: tuple[Modality, ...]
    preprocessors: dict[str, ModalityPreprocessor]
    config: FusionConfig

    @classmethod
    def from_moments(cls, modalities: list[Modality], moments: Mapping[str, Moments],
                     config: FusionConfig) -> Preprocessing:
        """Fit every modality's preprocessor from the moments of its training rows."""
        if config.standardise == "auto":
            raise ValueError("Preprocessing from moments needs standardise true or false.")
        preprocessors = {}
        for m in modalities:
            try:
                preprocessors[m.name] = ModalityPreprocessor.fit_from_moments(
                    moments[m.name], _capped(config.projection, m.dim),
                    standardise=bool(config.standardise), **config.preprocessor_options())
            except ValueError as error:
                raise ValueError(f"Preprocessing of modality '{m.name}': {error}") from None
        return cls(tuple(modalities), preprocessors, config)

    @classmethod
    def identity(cls, modalities: list[Modality], config: FusionConfig) -> Preprocessing:
        """No preprocessing (for ``early``/``late`` without standardisation or projection)."""
        config = dataclasses.replace(config, standardise=False, projection=None)
        return cls(tuple(modalities), {m.name: ModalityPreprocessor.identity(m.dim)
                                       for m in modalities}, config)

    @property
    def strategy(self) -> str:
        return self.config.strategy

    def mixture_modalities(self) -> list[Modality]:
        """The mixture's modalities: each input modality at its transformed width (``joint``),
        or the one concatenated block (``early``, see :func:`early_covariance_type`)."""
        if self.strategy == "early":
            width = sum(p.output_dim for p in self.preprocessors.values())
            return [Modality(EARLY, width, early_covariance_type(self.modalities))]
        return [Modality(m.name, self.preprocessors[m.name].output_dim, m.covariance_type,
                         m.weight) for m in self.modalities]

    def for_modality(self, name: str) -> Preprocessing:
        """The ``joint`` preprocessing of modality ``name`` alone (one mixture of ``late``)."""
        modality = next(m for m in self.modalities if m.name == name)
        return Preprocessing((dataclasses.replace(modality, weight=1.0),),
                             {name: self.preprocessors[name]},
                             dataclasses.replace(self.config, strategy="joint"))

    def transform(self, batch: Batch) -> Batch:
        """Rows of input ``batch`` as the mixture sees them (missing stays missing; ``early``:
        only the rows observing every modality, concatenated into one block)."""
        transformed = preprocess_batch(batch, self.preprocessors)
        if self.strategy == "early":
            return concatenated(transformed, [m.name for m in self.modalities])
        return transformed

    @contextlib.contextmanager
    def naming_coordinates(self) -> Iterator[None]:
        """Inside: a degenerate-feature warning of the mixture gains a note that the feature
        numbers of projected modalities count principal components, not input columns."""
        projected = [name for name, p in self.preprocessors.items() if p.components is not None]
        if not projected:
            yield
            return
        blocks = [EARLY] if self.strategy == "early" else projected
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("default")
                yield
        finally:
            note = (f" (In {', '.join(map(repr, projected))} the features are principal "
                    "components of the preprocessing, not input columns.)")
            for w in caught:
                message = str(w.message)
                if issubclass(w.category, DegenerateComponentWarning) and any(
                        f"'{name}'" in message for name in blocks):
                    message += note
                warnings.warn_explicit(message, w.category, w.filename, w.lineno)

    def is_identity(self) -> bool:
        """True when the mixture sees the input rows unchanged (no standardisation, no
        projection, not ``early``)."""
        return self.strategy != "early" and all(
            p.components is None and not p.mean.any() and (p.scale == 1).all()
            for p in self.preprocessors.values())

    def describe_rows(self, source: str) -> str:
        """What the mixture's rows of ``source`` are (for messages)."""
        if self.strategy == "early":
            return f"{source} (early fusion: the rows observing every modality)"
        return source

    def transform_arrays(self, data: ArrayData) -> dict[str, np.ndarray]:
        """{modality: (n, q)} from {modality: (n, d)} (NaN rows stay NaN; ``early``: the
        complete rows as one (n_complete, sum q) block)."""
        transformed = self.transform(batch_from_arrays(data, self.modalities))
        return {name: block.dense() for name, block in transformed.blocks.items()}

    def n_parameters(self) -> int:
        return sum(p.n_parameters() for p in self.preprocessors.values())

    def label(self) -> str:
        """Metric-name-safe settings, e.g. ``standardise-true_projection-8``."""
        q = self.config.projection
        return (f"standardise-{str(bool(self.config.standardise)).lower()}"
                f"_projection-{'none' if q is None else q}")

    def params(self) -> dict[str, Any]:
        """What to log with the fit: the strategy, the settings and each modality's input
        width (the mixture's ``modality.<name>.dim`` is its width after preprocessing)."""
        out = {FUSION_PARAM: self.strategy, **preprocessing_params(self.config)}
        for m in self.modalities:
            out[f"modality.{m.name}.input_dim"] = m.dim
        return out

    def model(self, mixture: MultimodalGaussianMixture, n_train_rows: int) -> FusionModel:
        """The fitted ``joint`` or ``early`` :class:`FusionModel` of these preprocessors and
        ``mixture``."""
        fused = FusionModel(list(self.modalities), _fitted_config(self.config, [mixture]))
        fused.preprocessors_ = dict(self.preprocessors)
        fused.mixtures_ = {EARLY if self.strategy == "early" else JOINT: mixture}
        fused.n_train_rows_ = int(n_train_rows)
        return fused


@dataclass(frozen=True)
class LatePart:
    """One modality's fitted piece of a ``late`` model.

    Attributes:
        model: the ``joint`` :class:`FusionModel` of that modality alone.
        mean, std: mean and (population) standard deviation of its log-likelihood over the
            training rows observing the modality.
    """

    model: FusionModel
    mean: float
    std: float


def late_model(preprocessing: Preprocessing, parts: Mapping[str, LatePart],
               n_train_rows: int) -> FusionModel:
    """The fitted ``late`` :class:`FusionModel` of one fitted part per modality."""
    mixtures = {name: part.model.mixtures_[JOINT] for name, part in parts.items()}
    fused = FusionModel(list(preprocessing.modalities),
                        _fitted_config(preprocessing.config, list(mixtures.values())))
    fused.preprocessors_ = {name: part.model.preprocessors_[name] for name, part in parts.items()}
    fused.mixtures_ = mixtures
    fused.late_stats_ = {name: (part.mean, max(part.std, 1e-12)) for name, part in parts.items()}
    fused.n_train_rows_ = int(n_train_rows)
    return fused


def _fitted_config(config: FusionConfig,
                   mixtures: list[MultimodalGaussianMixture]) -> FusionConfig:
    """``config`` naming the K and covariance types the fitted ``mixtures`` have."""
    return dataclasses.replace(
        config, n_components=tuple(dict.fromkeys(m.n_components for m in mixtures)),
        covariance_types=tuple(dict.fromkeys(x.covariance_type for m in mixtures
                                             for x in m.modalities)))


def early_covariance_type(modalities: tuple[Modality, ...] | list[Modality]) -> str:
    """Covariance type of the ``early`` block: the modalities' type when they all have the
    same, else ``full`` (the concatenated block of the scikit-learn approach)."""
    types = {m.covariance_type for m in modalities}
    return types.pop() if len(types) == 1 else "full"


def concatenated(batch: Batch, names: list[str]) -> Batch:
    """The rows of ``batch`` observing every modality, blocks ``names`` side by side as the
    one ``early`` block."""
    complete = batch.take(np.flatnonzero(batch.complete_rows()))
    values = np.hstack([complete.blocks[name].values for name in names])
    return Batch(complete.n_rows, {EARLY: Block(np.ones(complete.n_rows, dtype=bool), values)})


def observing(name: str) -> Callable[[Batch], Batch]:
    """A function keeping, of a batch, only block ``name`` and the rows observing it."""

    def restrict(batch: Batch) -> Batch:
        block = batch.blocks[name]
        n_rows = block.values.shape[0]
        return Batch(n_rows, {name: Block(np.ones(n_rows, dtype=bool), block.values)})

    return restrict


PREPROCESSING_PREFIX = "preprocessing."
FUSION_PARAM = "fusion"
"""Run parameter naming the strategy of a fit with a :class:`Preprocessing`."""


def preprocessing_params(config: FusionConfig) -> dict[str, Any]:
    """The preprocessing settings of ``config`` as run parameters (``preprocessing.*``)."""
    keys = ("standardise", "projection", "whiten", "residual", "variance", "rows_per_dim")
    return {PREPROCESSING_PREFIX + key: getattr(config, key) for key in keys}


def _capped(q: int | str | None, width: int) -> int | str | None:
    """A fixed projection size never exceeds the modality's width."""
    return min(q, width) if isinstance(q, int) else q


def is_fusion_artefact(path: str) -> bool:
    """True when directory ``path`` holds a :class:`FusionModel` (not a plain mixture)."""
    return os.path.isfile(os.path.join(path, FUSION_JSON))


def _dense(batch: Batch) -> dict[str, np.ndarray]:
    return {name: block.dense() for name, block in batch.blocks.items()}


def _residual_sum(preprocessors: dict[str, ModalityPreprocessor], data: dict[str, np.ndarray],
                  modalities: list[Modality]) -> np.ndarray:
    """(n,) sum over modalities of the preprocessing log-density terms (0 where missing)."""
    first = data[modalities[0].name]
    total = np.zeros(len(first))
    for m in modalities:
        total += np.nan_to_num(preprocessors[m.name].residual_log_density(data[m.name]))
    return total


def _marginal_log_prob(mixture: MultimodalGaussianMixture, x: np.ndarray,
                       index: np.ndarray) -> np.ndarray:
    """(n, K) log pi_k + log N(x | marginal of component k on coordinates ``index``)."""
    block = mixture.params.blocks[EARLY]
    k = mixture.n_components
    cov = block.full_covariances(k)[:, index][:, :, index]
    sub = GaussianBlock.from_covariances("full", block.means[:, index], cov, EARLY)
    return log_gaussian_density(Centred(np.zeros(len(index)), x), sub) + np.log(mixture.weights_)
