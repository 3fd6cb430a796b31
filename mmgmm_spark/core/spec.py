"""What defines a mixture fit: its modalities and hyperparameters, validated in one place.

A :class:`MixtureSpec` is shared by the estimator, the EM driver, model files and
checkpoints: ``to_dict`` / ``from_dict`` give the one JSON form they all store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch, DataValidationError
from mmgmm_spark.core.covariance import covariance_type
from mmgmm_spark.core.densities import COMPUTE_DTYPES
from mmgmm_spark.core.init import INIT_METHODS, initial_params
from mmgmm_spark.core.modality import Modality, check_modalities
from mmgmm_spark.core.params import MixtureParams, check_param_shapes, quantisation_variances

HYPERPARAMETERS = ("n_components", "tol", "reg_covar", "max_iter", "n_init", "init_params")
"""The hyperparameters stored (with the integer seed) in model files and checkpoints."""

REG_COVAR_MODES = ("absolute", "relative", "dequantise")
"""``absolute``: ``reg_covar`` is added to every covariance's diagonal as is; ``relative``: it
is multiplied by each modality's mean feature variance (of the initialisation sample);
``dequantise``: each feature also gets step^2 / 12, its quantisation step's uniform-noise
variance (:func:`mmgmm_spark.core.params.quantisation_variances` of the initialisation
sample), so a component cannot collapse onto a lattice of discrete values."""

DEFAULT_REG_COVAR = 1e-3
"""The one default of ``reg_covar``: the estimator, :class:`FusionConfig` and the jobs' config
(``model.reg_covar``). scikit-learn's 1e-6 lets a component collapse onto a few rows of
low-variance features (``early`` fusion, K=10 on the demo data: cross-modal AUROC 0.31)."""

MIN_ROWS_PER_PARAMETER = 1.0
"""A fit with fewer training rows per free parameter is refused unless ``allow_small_data``."""

OPTIONAL_HYPERPARAMETERS = {"reg_covar_mode": "absolute", "compute_dtype": "float64"}
"""Stored like :data:`HYPERPARAMETERS`; files written before they existed get these defaults."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer)


@dataclass(frozen=True)
class MixtureSpec:
    """Modalities and EM settings of one mixture (see :class:`MultimodalGaussianMixture`).

    Attributes:
        modalities: the feature blocks.
        n_components: K.
        tol, reg_covar, max_iter, n_init, init_params: EM settings.
        weights_init: (K,) initial weights, or None.
        means_init: {modality: (K, d)} initial means, or None.
        precisions_init: {modality: precisions in the covariance type's shape}, or None.
        random_state: an int seed, a ``numpy.random.RandomState`` (used as is), or None.
        allow_small_data: fit even with fewer than :data:`MIN_ROWS_PER_PARAMETER` rows per
            free parameter (not stored with the model).
        compute_dtype: "float64" (default) or "float32": the dtype the E-step and statistics
            kernels multiply in; statistics are summed and the M-step done in float64.
    """

    modalities: tuple[Modality, ...]
    n_components: int = 1
    tol: float = 1e-3
    reg_covar: float = DEFAULT_REG_COVAR
    reg_covar_mode: str = "absolute"
    max_iter: int = 100
    n_init: int = 1
    init_params: str = "kmeans"
    weights_init: np.ndarray | None = field(default=None, compare=False)
    means_init: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    precisions_init: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    random_state: int | np.random.RandomState | None = field(default=None, compare=False)
    allow_small_data: bool = field(default=False, compare=False)
    compute_dtype: str = "float64"

    def validate(self) -> MixtureSpec:
        """``self``, after checking every setting; a ValueError names the first bad one."""
        check_modalities(list(self.modalities))
        checks = [
            ("n_components", _is_int(self.n_components) and self.n_components >= 1,
             "an integer >= 1"),
            ("tol", self.tol >= 0, "a number >= 0"),
            ("reg_covar", self.reg_covar >= 0, "a number >= 0"),
            ("reg_covar_mode", self.reg_covar_mode in REG_COVAR_MODES,
             f"one of {REG_COVAR_MODES}"),
            ("max_iter", _is_int(self.max_iter) and self.max_iter >= 0, "an integer >= 0"),
            ("n_init", _is_int(self.n_init) and self.n_init >= 1, "an integer >= 1"),
            ("init_params", self.init_params in INIT_METHODS, f"one of {INIT_METHODS}"),
            ("compute_dtype", self.compute_dtype in COMPUTE_DTYPES, f"one of {COMPUTE_DTYPES}"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}.")
        check_param_shapes(self.modalities, self.n_components, self.weights_init,
                           self.means_init, self.precisions_init)
        return self

    def block_reg_covar(self, sample: Batch) -> dict[str, float | np.ndarray]:
        """{modality: the value added to its covariances' diagonal}: ``reg_covar``, times
        (``relative``) the mean variance of the modality's features over the observed rows of
        ``sample`` (1 when they have none), or plus (``dequantise``) the (d,) quantisation
        variances of those rows."""
        if self.reg_covar_mode == "dequantise":
            return {m.name: self.reg_covar + quantisation_variances(sample.blocks[m.name].values)
                    for m in self.modalities}

        def scale(name: str) -> float:
            values = sample.blocks[name].values
            variance = float(values.var(axis=0).mean()) if values.shape[0] > 1 else 0.0
            return variance if variance > 0 else 1.0

        relative = self.reg_covar_mode == "relative"
        return {m.name: self.reg_covar * (scale(m.name) if relative else 1.0)
                for m in self.modalities}

    def n_free_parameters(self) -> int:
        """Free parameters of the mixture: weights, means and covariances (scikit-learn's
        count, summed over the blocks)."""
        k = self.n_components
        return k - 1 + sum(int(covariance_type(m.covariance_type).n_covariance_parameters(k, m.dim))
                           + k * m.dim for m in self.modalities)

    def check_enough_rows(self, n_rows: int, source: str) -> None:
        """Refuse fewer than :data:`MIN_ROWS_PER_PARAMETER` rows per free parameter (unless
        ``allow_small_data``), naming the rows, the parameters and the ratio."""
        n_parameters = self.n_free_parameters()
        if self.allow_small_data or n_rows >= MIN_ROWS_PER_PARAMETER * n_parameters:
            return
        blocks = ", ".join(f"'{m.name}' dim {m.dim} {m.covariance_type}"
                           for m in self.modalities)
        raise DataValidationError(
            f"{source}: {n_rows} rows for {n_parameters} free parameters (n_components="
            f"{self.n_components}, modalities {blocks}): {n_rows / n_parameters:.2f} "
            f"rows per parameter, fewer than {MIN_ROWS_PER_PARAMETER:g}. Lower n_components, use "
            "diag covariances or a projection, add rows, or fit anyway with "
            "model.allow_small_data: true (estimator: allow_small_data=True).")

    @property
    def seed(self) -> int | None:
        """The integer seed, or None when ``random_state`` is None or a generator."""
        return self.random_state if isinstance(self.random_state, int) else None

    def rng(self) -> np.random.RandomState:
        """The initialisation generator: ``random_state`` itself when it is one."""
        if isinstance(self.random_state, np.random.RandomState):
            return self.random_state
        return np.random.RandomState(self.random_state)

    def initial_params(self, batch: Batch, rng: np.random.RandomState) -> MixtureParams:
        """Initial parameters from (a sample of) the rows, honouring the ``*_init`` values."""
        return initial_params(batch, self.modalities, self.n_components, self.init_params, rng,
                              self.block_reg_covar(batch), self.weights_init, self.means_init,
                              self.precisions_init)

    def hyperparameters(self) -> dict[str, Any]:
        """:data:`HYPERPARAMETERS`, :data:`OPTIONAL_HYPERPARAMETERS` and the integer seed, as
        plain JSON values."""
        names = (*HYPERPARAMETERS, *OPTIONAL_HYPERPARAMETERS)
        return {name: getattr(self, name) for name in names} | {"random_state": self.seed}

    def to_dict(self) -> dict[str, Any]:
        """``{"modalities": [...], "hyperparameters": {...}}`` (no initial values)."""
        return {"modalities": [m.to_dict() for m in self.modalities],
                "hyperparameters": self.hyperparameters()}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> MixtureSpec:
        """The validated spec of :meth:`to_dict`'s form (KeyError/TypeError/ValueError)."""
        hyper = document["hyperparameters"]
        return cls(tuple(Modality.from_dict(d) for d in document["modalities"]),
                   **{name: hyper[name] for name in HYPERPARAMETERS},
                   **{name: hyper.get(name, default)
                      for name, default in OPTIONAL_HYPERPARAMETERS.items()},
                   random_state=hyper.get("random_state")).validate()


SPEC_FIELDS = tuple(f.name for f in fields(MixtureSpec) if f.name != "modalities")
"""The estimator's constructor arguments after ``modalities``, in order."""
