"""The user-facing estimator, with scikit-learn's names for parameters and fitted attributes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, batch_from_arrays
from mmgmm_spark.core.densities import (
    modality_log_likelihoods,
    normalise_log_prob,
    weighted_log_prob,
)
from mmgmm_spark.core.em import (
    EMResult,
    IterationCallback,
    IterationReport,
    StatsPass,
    best_of_restarts,
    run_em,
    warn_collapsed_components,
)
from mmgmm_spark.core.init import INIT_METHODS, initial_params
from mmgmm_spark.core.modality import Modality, check_modalities
from mmgmm_spark.core.params import MixtureParams, check_param_shapes
from mmgmm_spark.core.stats import accumulate_stats

log = logging.getLogger(__name__)

ArrayData = Mapping[str, np.ndarray]


class NotFittedError(RuntimeError):
    """A method that needs fitted parameters was called before ``fit`` or ``load``."""


def log_iteration(report: IterationReport) -> None:
    log.info("EM iteration %d: mean log-likelihood %.6f (change %.3g) in %.2f s",
             report.iteration, report.mean_log_likelihood, report.change, report.seconds)


class MultimodalGaussianMixture:
    """Mixture whose components are products of per-modality Gaussians, fitted by EM.

    p(x) = sum_k pi_k prod_m N(x^(m) | mu_k^(m), Sigma_k^(m))^(w_m). A modality missing from a
    row (whole block NaN, or null in a table) is marginalised out, never imputed.

    Args:
        modalities: the feature blocks, each a :class:`Modality`.
        n_components: K.
        tol: stop when the mean log-likelihood changes by less than this (0: never).
        reg_covar: added to the diagonal of every covariance.
        max_iter: EM iterations per initialisation.
        n_init: initialisations; the best final lower bound is kept.
        init_params: "kmeans", "k-means++", "random" or "random_from_data".
        weights_init: (K,) initial weights, or None.
        means_init: {modality: (K, d)} initial means, or None.
        precisions_init: {modality: precisions in the covariance type's shape}, or None.
        random_state: seed (int), a ``numpy.random.RandomState``, or None.
    """

    def __init__(self, modalities: list[Modality], n_components: int = 1, *, tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "kmeans", weights_init: np.ndarray | None = None,
                 means_init: dict[str, np.ndarray] | None = None,
                 precisions_init: dict[str, np.ndarray] | None = None,
                 random_state: int | np.random.RandomState | None = None) -> None:
        self.modalities = check_modalities(modalities)
        self.n_components = n_components
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.params_: MixtureParams | None = None
        self.converged_ = False
        self.lower_bounds_: list[float] = []
        self.n_train_rows_ = 0
        self.collapsed_components_: list[int] = []
        self.extra_: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- fitting
    def _check_hyperparameters(self) -> None:
        checks = [
            ("n_components", self.n_components, isinstance(self.n_components, int | np.integer)
             and self.n_components >= 1, "an integer >= 1"),
            ("tol", self.tol, self.tol >= 0, "a number >= 0"),
            ("reg_covar", self.reg_covar, self.reg_covar >= 0, "a number >= 0"),
            ("max_iter", self.max_iter, isinstance(self.max_iter, int | np.integer)
             and self.max_iter >= 0, "an integer >= 0"),
            ("n_init", self.n_init, isinstance(self.n_init, int | np.integer)
             and self.n_init >= 1, "an integer >= 1"),
            ("init_params", self.init_params, self.init_params in INIT_METHODS,
             f"one of {INIT_METHODS}"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r}.")
        check_param_shapes(self.modalities, self.n_components, self.weights_init,
                           self.means_init, self.precisions_init)

    def _random_state(self) -> np.random.RandomState:
        if isinstance(self.random_state, np.random.RandomState):
            return self.random_state
        return np.random.RandomState(self.random_state)

    def fit(self, data: Any, *, on_iteration: IterationCallback | None = log_iteration,
            **spark_options: Any) -> MultimodalGaussianMixture:
        """Fit by EM and return ``self``.

        Args:
            data: a dict of (n, d_m) arrays keyed by modality name (NaN rows = missing), or a
                Spark DataFrame with one array/vector column per modality (see
                :func:`mmgmm_spark.spark.fit.fit_dataframe` for ``spark_options``).
            on_iteration: called after every EM iteration (default: a log line).
        """
        self._check_hyperparameters()
        if _is_spark_dataframe(data):
            from mmgmm_spark.spark.fit import fit_dataframe

            return fit_dataframe(self, data, on_iteration=on_iteration, **spark_options)
        batch = batch_from_arrays(data, self.modalities)
        rng = self._random_state()
        result = self.fit_em(
            lambda _: self.initial_params(batch, rng),
            lambda params: accumulate_stats(batch, params, self.modalities),
            on_iteration)
        return self.set_result(result, batch.n_rows)

    def initial_params(self, batch: Batch, rng: np.random.RandomState) -> MixtureParams:
        """Initial parameters from (a sample of) the rows, honouring the ``*_init`` arguments."""
        return initial_params(batch, self.modalities, self.n_components, self.init_params, rng,
                              self.reg_covar, self.weights_init, self.means_init,
                              self.precisions_init)

    def fit_em(self, initials: Any, stats_pass: StatsPass,
               on_iteration: IterationCallback | None) -> EMResult:
        """EM with ``n_init`` restarts over any statistics pass (in memory or on Spark)."""
        return best_of_restarts(
            initials, self.n_init,
            lambda start: run_em(stats_pass, start, self.modalities, self.reg_covar, self.tol,
                                 self.max_iter, on_iteration))

    def set_result(self, result: EMResult, n_rows: int) -> MultimodalGaussianMixture:
        """Store the parameters and history of a finished EM run on the estimator."""
        self.params_ = result.params
        self.converged_ = result.converged
        self.lower_bounds_ = list(result.lower_bounds)
        self.n_train_rows_ = n_rows
        self.collapsed_components_ = warn_collapsed_components(result.params.weights, n_rows)
        return self

    # ----------------------------------------------------------------- fitted attributes
    @property
    def params(self) -> MixtureParams:
        if self.params_ is None:
            raise NotFittedError("This MultimodalGaussianMixture is not fitted yet: call fit() "
                                 "or load() first.")
        return self.params_

    @property
    def weights_(self) -> np.ndarray:
        return self.params.weights

    @property
    def means_(self) -> dict[str, np.ndarray]:
        return {name: b.means for name, b in self.params.blocks.items()}

    @property
    def covariances_(self) -> dict[str, np.ndarray]:
        return {name: b.covariances for name, b in self.params.blocks.items()}

    @property
    def precisions_cholesky_(self) -> dict[str, np.ndarray]:
        return {name: b.precisions_cholesky for name, b in self.params.blocks.items()}

    @property
    def precisions_(self) -> dict[str, np.ndarray]:
        """Precision matrices (inverse covariances) in each covariance type's shape."""
        return {name: b.precisions() for name, b in self.params.blocks.items()}

    @property
    def n_iter_(self) -> int:
        return len(self.lower_bounds_)

    @property
    def lower_bound_(self) -> float:
        return self.lower_bounds_[-1] if self.lower_bounds_ else -np.inf

    # ----------------------------------------------------------------------- inference
    def _batch(self, data: ArrayData) -> Batch:
        """Rows to score: a modality may be missing from every row (it is marginalised)."""
        return batch_from_arrays(data, self.modalities)

    def _log_prob(self, data: ArrayData) -> tuple[np.ndarray, np.ndarray]:
        batch = self._batch(data)
        return normalise_log_prob(weighted_log_prob(batch, self.params, self.modalities))

    def score_samples(self, data: ArrayData) -> np.ndarray:
        """(n,) log-likelihood of each row (the negative is the anomaly score)."""
        return self._log_prob(data)[0]

    def score(self, data: ArrayData) -> float:
        """Mean log-likelihood per row."""
        return float(self.score_samples(data).mean())

    def predict_proba(self, data: ArrayData) -> np.ndarray:
        """(n, K) posterior probability of each component."""
        return np.exp(self._log_prob(data)[1])

    def predict(self, data: ArrayData) -> np.ndarray:
        """(n,) most probable component."""
        return self._log_prob(data)[1].argmax(axis=1)

    def modality_log_likelihoods(self, data: ArrayData) -> dict[str, np.ndarray]:
        """Per modality, (n,) marginal log-likelihood of the row's block; NaN where missing."""
        return modality_log_likelihoods(self._batch(data), self.params, self.modalities)

    def n_parameters(self) -> int:
        return self.params.n_parameters()

    def bic(self, data: ArrayData) -> float:
        """Bayesian information criterion (lower is better)."""
        n = self._batch(data).n_rows
        return -2 * self.score(data) * n + self.n_parameters() * np.log(n)

    def aic(self, data: ArrayData) -> float:
        """Akaike information criterion (lower is better)."""
        n = self._batch(data).n_rows
        return -2 * self.score(data) * n + 2 * self.n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Draw rows from the mixture: ({modality: (n, d)}, component labels (n,))."""
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
        rng = self._random_state()
        counts = rng.multinomial(n_samples, self.weights_)
        labels = np.repeat(np.arange(self.n_components), counts)
        out = {}
        for m in self.modalities:
            block = self.params.blocks[m.name]
            cov = block.full_covariances(self.n_components)
            out[m.name] = np.vstack([
                rng.multivariate_normal(block.means[k], cov[k], int(c)) if c else
                np.empty((0, m.dim)) for k, c in enumerate(counts)])
        return out, labels

    # ----------------------------------------------------------------------- persistence
    def save(self, path: str) -> None:
        """Write the fitted model to directory ``path`` as numpy arrays + JSON (no pickle)."""
        from mmgmm_spark.io.model_files import save_model

        save_model(self, path)

    @classmethod
    def load(cls, path: str) -> MultimodalGaussianMixture:
        """Read a model written by :meth:`save`, validating every array's shape and dtype."""
        from mmgmm_spark.io.model_files import load_model

        return load_model(path)


def _is_spark_dataframe(data: Any) -> bool:
    return type(data).__module__.startswith("pyspark.sql") and hasattr(data, "schema")
