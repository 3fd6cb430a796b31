"""The configuration of a fused detector, and its preprocessing settings as run params."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import Any

from mmgmm_spark.core.modality import COVARIANCE_TYPES
from mmgmm_spark.core.spec import DEFAULT_REG_COVAR, REG_COVAR_MODES
from mmgmm_spark.models.fusion.base import FusionStrategy
from mmgmm_spark.models.fusion.registry import get_strategy

PREPROCESSING_PREFIX = "preprocessing."
FUSION_PARAM = "fusion"
"""Run parameter naming the strategy of a fit with a :class:`Preprocessing`."""


@dataclass(frozen=True)
class FusionConfig:
    """Everything that defines a fused detector except the data.

    Attributes:
        strategy: a name in :data:`STRATEGIES` ("joint", "early" or "late").
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
        normal_scores: map every feature to its normal score (empirical CDF from
            ``n_quantiles`` quantiles, then Phi^-1) before standardisation and projection: a
            Gaussian-copula mixture (see :mod:`mmgmm_spark.core.marginals`).
        n_quantiles: quantiles stored per feature for ``normal_scores``.
        ensemble: score by the rank average (mean normal score) of every admissible
            candidate sharing the chosen preprocessing instead of the lowest-BIC one alone
            (see :mod:`mmgmm_spark.models.fusion.ensemble`; not for ``late``).
        subspaces: score by the rank average (mean normal score, as ``ensemble``) of this
            many mixtures, each selected by BIC on its own random subspace of every modality's
            features (0: off; see :mod:`mmgmm_spark.models.fusion.subspaces`; not for
            ``late``, nor with ``ensemble``).
        subspace_fraction: a subspace keeps ceil(fraction x d) of a modality's d features,
            at most d - 1 (all of them when d <= 2).
        min_weight: candidates with a component weight below this are not admissible
            (K = 1 always is): a tiny component tends to model a cluster of anomalies.
        min_variance: candidates with a component whose smallest variance relative to the
            mixture's (:func:`mmgmm_spark.core.params.relative_variances`) is below this are
            not admissible (K = 1 always is): such a component sits on a point mass of some
            features (discrete values, duplicates) and buys likelihood there without
            describing the normal rows.
        reg_covar, max_iter, tol, n_init, init_params, random_state: EM settings.
        reg_covar_mode: "absolute", "relative" or "dequantise" (see
            :data:`mmgmm_spark.core.spec.REG_COVAR_MODES`), on the features the mixture fits.
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
    normal_scores: bool = False
    n_quantiles: int = 1000
    ensemble: bool = False
    subspaces: int = 0
    subspace_fraction: float = 0.75
    min_weight: float = 0.1
    min_variance: float = 0.0
    reg_covar: float = DEFAULT_REG_COVAR
    reg_covar_mode: str = "absolute"
    max_iter: int = 200
    tol: float = 1e-3
    n_init: int = 1
    init_params: str = "kmeans"
    random_state: int | None = 0

    def __post_init__(self) -> None:
        get_strategy(self.strategy)
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
        if self.ensemble and self.fusion.per_modality:
            raise ValueError(f"ensemble needs one mixture per model; strategy "
                             f"'{self.strategy}' fits one per modality: set ensemble false.")
        self._check_subspaces()
        if self.reg_covar_mode not in REG_COVAR_MODES:
            raise ValueError(f"reg_covar_mode must be one of {REG_COVAR_MODES}, "
                             f"got {self.reg_covar_mode!r}.")
        if int(self.n_quantiles) < 2:
            raise ValueError(f"n_quantiles must be >= 2, got {self.n_quantiles!r}.")

    def _check_subspaces(self) -> None:
        if isinstance(self.subspaces, bool) or not isinstance(self.subspaces, Integral) \
                or self.subspaces < 0:
            raise ValueError(f"subspaces must be an int >= 0 (0: off), got {self.subspaces!r}.")
        fraction = self.subspace_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 < fraction <= 1:
            raise ValueError(f"subspace_fraction must be a number in (0, 1], got {fraction!r}.")
        object.__setattr__(self, "subspaces", int(self.subspaces))     # numpy ints: JSON
        object.__setattr__(self, "subspace_fraction", float(fraction))
        if self.subspaces and self.ensemble:
            raise ValueError("subspaces and ensemble are two ways to average mixtures: set one "
                             "of them (subspaces 0 or ensemble false).")
        if self.subspaces and self.fusion.per_modality:
            raise ValueError(f"subspaces needs one mixture per model; strategy "
                             f"'{self.strategy}' fits one per modality: set subspaces 0.")

    @property
    def fusion(self) -> FusionStrategy:
        """The :class:`FusionStrategy` called :attr:`strategy`."""
        return get_strategy(self.strategy)

    def preprocessor_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`ModalityPreprocessor.fit_from_moments` set by this
        config (:meth:`ModalityPreprocessor.fit` also takes :meth:`marginal_options`)."""
        return {"whiten": self.whiten, "residual": self.residual, "variance": self.variance,
                "rows_per_dim": self.rows_per_dim}

    def marginal_options(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`ModalityPreprocessor.fit` for the marginal transform."""
        return {"normal_scores": self.normal_scores, "n_quantiles": self.n_quantiles}

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


def preprocessing_params(config: FusionConfig) -> dict[str, Any]:
    """The preprocessing settings of ``config`` as run parameters (``preprocessing.*``)."""
    keys = ("standardise", "projection", "whiten", "residual", "variance", "rows_per_dim")
    return {PREPROCESSING_PREFIX + key: getattr(config, key) for key in keys}


def capped(q: int | str | None, width: int) -> int | str | None:
    """A fixed projection size never exceeds the modality's width."""
    return min(q, width) if isinstance(q, int) else q
