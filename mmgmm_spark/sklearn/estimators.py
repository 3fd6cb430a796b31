"""scikit-learn estimators over (n, d) arrays, on the package's own mixture and EM.

Columns are grouped into modalities (one group of all columns by default); a row whose
columns of a group are all NaN misses that modality, which is marginalised out. Both
estimators keep every constructor argument as given (scikit-learn's ``clone`` and
``GridSearchCV`` rely on it) and validate them in ``fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin, OutlierMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.quantiles import weighted_quantile
from mmgmm_spark.models.mixture import MultimodalGaussianMixture as Mixture

DEFAULT_MODALITY = "x"
"""Name of the single modality when ``modalities`` is None."""

ColumnGroup = tuple  # (name, columns) | (name, columns, covariance_type[, fusion weight])


def column_groups(modalities: Sequence[ColumnGroup] | None, n_features: int,
                  covariance_type: str) -> list[tuple[Modality, np.ndarray]]:
    """The modalities and their column indices; every column in exactly one group.

    Args:
        modalities: None (one modality of all columns) or ``(name, columns)`` /
            ``(name, columns, covariance_type)`` / ``(name, columns, covariance_type,
            weight)`` tuples, ``columns`` a sequence of column indices.
        n_features: d, the number of columns of X.
        covariance_type: the type of a group that names none.
    """
    if modalities is None:
        return [(Modality(DEFAULT_MODALITY, n_features, covariance_type), np.arange(n_features))]
    groups = []
    for group in modalities:
        if not isinstance(group, tuple | list) or not 2 <= len(group) <= 4:
            raise ValueError(f"modalities: each entry is (name, columns[, covariance_type"
                             f"[, weight]]), got {group!r}.")
        name, columns, *rest = group
        columns = np.asarray(columns, dtype=np.int64).ravel()
        kind = rest[0] if rest else covariance_type
        weight = float(rest[1]) if len(rest) > 1 else 1.0
        groups.append((Modality(str(name), int(columns.size), kind, weight), columns))
    used = np.concatenate([columns for _, columns in groups])
    counts = np.bincount(used[(used >= 0) & (used < n_features)], minlength=n_features)
    outside = sorted(set(used[(used < 0) | (used >= n_features)].tolist()))
    if outside or (counts != 1).any():
        raise ValueError(
            f"modalities must split the {n_features} columns of X into groups: columns "
            f"{np.flatnonzero(counts == 0).tolist()} are in no group, "
            f"{np.flatnonzero(counts > 1).tolist()} in several, {outside} out of range.")
    return groups


class MixtureEstimator:
    """What both estimators share: column groups -> the package's mixture, and its methods.

    A mixin placed before scikit-learn's (its ``score`` overrides ``DensityMixin``'s);
    subclasses declare their constructor arguments (scikit-learn reads them from
    ``__init__``); the mixture's are :data:`MIXTURE_PARAMS`.
    """

    MIXTURE_PARAMS = ("n_components", "tol", "reg_covar", "max_iter", "n_init", "init_params",
                      "weights_init", "means_init", "precisions_init", "random_state")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN over a column group = that modality missing; with one modality a NaN row would
        # observe nothing, so NaN is then refused like any non-finite value
        tags.input_tags.allow_nan = self.modalities is not None
        return tags

    def validated(self, X: Any, reset: bool) -> np.ndarray:
        """X as (n, d) float64, NaN allowed only with column groups."""
        return validate_data(self, X, dtype=np.float64, reset=reset,
                             ensure_all_finite="allow-nan" if self.modalities is not None
                             else True)

    # ------------------------------------------------------------------------ fitting
    def fit_mixture(self, X: Any, sample_weight: Any = None) -> np.ndarray:
        """Fit ``self.model_`` on X (n, d); return the validated float64 X."""
        X = self.validated(X, reset=True)
        self.groups_ = column_groups(self.modalities, X.shape[1], self.covariance_type)
        names = [m.name for m, _ in self.groups_]
        init = {name: self.per_modality(getattr(self, name), names)
                for name in ("means_init", "precisions_init")}
        options = {name: getattr(self, name) for name in self.MIXTURE_PARAMS} | init
        warm = getattr(self, "model_", None) if self.warm_start else None
        # scikit-learn's conventions: small data is fitted, not refused (the jobs refuse it)
        model = Mixture([m for m, _ in self.groups_], **options, allow_small_data=True)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.model_ = model.fit(self.split(X), sample_weight=weights, initial_model=warm,
                                on_iteration=None)
        self.set_fitted_attributes()
        return X

    @staticmethod
    def per_modality(value: Any, names: list[str]) -> dict | None:
        """An initial array as the mixture's {modality: array} (a bare array: one modality)."""
        if value is None or isinstance(value, dict):
            return value
        return {names[0]: value}

    def set_fitted_attributes(self) -> None:
        """GaussianMixture's fitted attributes: arrays with one modality, else dicts by name."""
        model = self.model_
        for name in ("means_", "covariances_", "precisions_", "precisions_cholesky_"):
            value = getattr(model, name)
            setattr(self, name, next(iter(value.values())) if len(value) == 1 else value)
        self.weights_ = model.weights_
        self.converged_ = model.converged_
        self.n_iter_ = model.n_iter_
        self.lower_bound_ = model.lower_bound_
        self.lower_bounds_ = list(model.lower_bounds_)

    def split(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """{modality: (n, d_m) columns of X}."""
        return {m.name: X[:, columns] for m, columns in self.groups_}

    def rows(self, X: Any) -> dict[str, np.ndarray]:
        """Validated X of a fitted estimator, as {modality: (n, d_m)}."""
        check_is_fitted(self, "model_")
        return self.split(self.validated(X, reset=False))

    # ---------------------------------------------------------------------- inference
    def score_samples(self, X: Any) -> np.ndarray:
        """(n,) log-likelihood of each row (lower = more abnormal)."""
        rows = self.rows(X)
        return self.model_.score_samples(rows)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per row (what ``GridSearchCV`` maximises)."""
        return float(self.score_samples(X).mean())

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on X (lower is better)."""
        rows = self.rows(X)
        return self.model_.bic(rows)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on X (lower is better)."""
        rows = self.rows(X)
        return self.model_.aic(rows)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(n_samples, d) rows drawn from the mixture, and their (n_samples,) components."""
        check_is_fitted(self, "model_")
        blocks, labels = self.model_.sample(n_samples)
        X = np.empty((n_samples, self.n_features_in_))
        for m, columns in self.groups_:
            X[:, columns] = blocks[m.name]
        return X, labels


class MultimodalGaussianMixture(MixtureEstimator, DensityMixin, BaseEstimator):
    """Multimodal Gaussian mixture with ``sklearn.mixture.GaussianMixture``'s conventions.

    Args:
        n_components: K.
        covariance_type: of the single modality, or of a group that names none.
        modalities: None (one modality of all columns) or column groups ``(name, columns
            [, covariance_type[, fusion weight]])`` splitting the columns of X.
        tol, reg_covar, max_iter, n_init, init_params, random_state: as GaussianMixture's.
        weights_init: (K,); means_init: (K, d_m); precisions_init: the covariance type's
            shape — arrays with one modality, dicts keyed by modality name with several.
        warm_start: start each ``fit`` from the previous fit's parameters (n_init ignored).

    Fitted attributes: ``weights_``, ``means_``, ``covariances_``, ``precisions_``,
    ``precisions_cholesky_`` (arrays with one modality, else dicts by modality), ``converged_``,
    ``n_iter_``, ``lower_bound_``, ``lower_bounds_``, ``model_`` (the package's mixture).
    """

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full",
                 modalities: Sequence[ColumnGroup] | None = None, tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "kmeans", weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None,
                 warm_start: bool = False) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.modalities = modalities
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MultimodalGaussianMixture:
        """Fit by EM on X (n, d); ``sample_weight`` (n,): a row of weight w counts w times."""
        self.fit_mixture(X, sample_weight)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """(n,) most probable component of each row."""
        rows = self.rows(X)
        return self.model_.predict(rows)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, K) posterior probability of each component."""
        rows = self.rows(X)
        return self.model_.predict_proba(rows)

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> np.ndarray:
        """Fit, then the (n,) most probable component of each training row."""
        return self.fit(X, sample_weight=sample_weight).predict(X)


class MultimodalAnomalyDetector(MixtureEstimator, OutlierMixin, BaseEstimator):
    """Outlier detector with ``IsolationForest``'s conventions, on a multimodal mixture.

    ``score_samples`` is the log-likelihood (lower = more abnormal), ``offset_`` its
    ``contamination`` quantile over the (weighted) training rows, ``decision_function`` =
    ``score_samples - offset_`` (negative = outlier) and ``predict`` returns -1 for outliers,
    +1 for inliers. Other arguments and fitted attributes: as
    :class:`MultimodalGaussianMixture`'s.

    Args:
        contamination: expected share of outliers in the training rows, in (0, 0.5].
    """

    def __init__(self, n_components: int = 1, *, contamination: float = 0.1,
                 covariance_type: str = "full", modalities: Sequence[ColumnGroup] | None = None,
                 tol: float = 1e-3, reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "kmeans", weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None,
                 warm_start: bool = False) -> None:
        self.n_components = n_components
        self.contamination = contamination
        self.covariance_type = covariance_type
        self.modalities = modalities
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> MultimodalAnomalyDetector:
        """Fit the mixture on X (n, d) and set ``offset_`` from the training scores."""
        if not (isinstance(self.contamination, int | float) and 0 < self.contamination <= 0.5):
            raise ValueError(f"contamination must be a number in (0, 0.5], got "
                             f"{self.contamination!r}.")
        X = self.fit_mixture(X, sample_weight)
        weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        self.offset_ = weighted_quantile(self.score_samples(X), self.contamination, weights)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """(n,) ``score_samples(X) - offset_``: negative for outliers."""
        check_is_fitted(self, "offset_")
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        """(n,) -1 for outliers, +1 for inliers."""
        return np.where(self.decision_function(X) >= 0, 1, -1)
