"""What defines a mixture fit: its modalities and hyperparameters, validated in one place.

A :class:`MixtureSpec` is shared by the estimator, the EM driver, model files and
checkpoints: ``to_dict`` / ``from_dict`` give the one JSON form they all store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from mmgmm_spark.core.batch import Batch
from mmgmm_spark.core.densities import COMPUTE_DTYPES
from mmgmm_spark.core.init import INIT_METHODS, initial_params
from mmgmm_spark.core.modality import Modality, check_modalities
from mmgmm_spark.core.params import MixtureParams, check_param_shapes

HYPERPARAMETERS = ("n_components", "tol", "reg_covar", "max_iter", "n_init", "init_params")
"""The hyperparameters stored (with the integer seed) in model files and checkpoints."""

OPTIONAL_HYPERPARAMETERS = {"compute_dtype": "float64"}
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
        compute_dtype: "float64" (default) or "float32": the dtype the E-step and statistics
            kernels multiply in; statistics are summed and the M-step done in float64.
    """

    modalities: tuple[Modality, ...]
    n_components: int = 1
    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    n_init: int = 1
    init_params: str = "kmeans"
    weights_init: np.ndarray | None = field(default=None, compare=False)
    means_init: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    precisions_init: Mapping[str, np.ndarray] | None = field(default=None, compare=False)
    random_state: int | np.random.RandomState | None = field(default=None, compare=False)
    compute_dtype: str = "float64"

    def validate(self) -> MixtureSpec:
        """``self``, after checking every setting; a ValueError names the first bad one."""
        check_modalities(list(self.modalities))
        checks = [
            ("n_components", _is_int(self.n_components) and self.n_components >= 1,
             "an integer >= 1"),
            ("tol", self.tol >= 0, "a number >= 0"),
            ("reg_covar", self.reg_covar >= 0, "a number >= 0"),
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
                              self.reg_covar, self.weights_init, self.means_init,
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
