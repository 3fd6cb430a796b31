"""Marginal transform to normal scores (a Gaussian copula in front of the mixture).

Each feature x_j is replaced by ``z_j = Phi^-1(F_j(x_j))`` where ``F_j`` is its empirical CDF
read from ``n_quantiles`` stored quantiles (Hazen plotting positions p = (i + 0.5) / m), so
the mixture sees features whose marginals are standard normal whatever their skew, heavy
tails or discreteness. The quantiles are the only fitted statistic: exact in memory, an
approximate quantile sketch on Spark (``approxQuantile``), stored as plain arrays.

Ties (discrete features) get the mean plotting position of their run of equal quantiles
(mid-ranks), so a value shared by 90% of the rows maps to the middle of its probability
mass, not to one end. With as many quantiles as rows the transform of a training row is
exactly ``Phi^-1((r - 0.5) / n)`` for its average rank r (scipy's ``rankdata``). Beyond the
outermost quantiles the score continues linearly with slope ``1 / std_j`` (a Gaussian tail), so
a new row further out than every training row stays more anomalous instead of being clipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from mmgmm_spark.core.params import stored_array

DEFAULT_N_QUANTILES = 1000


def plotting_positions(n_quantiles: int) -> np.ndarray:
    """(m,) the probabilities (i + 0.5) / m at which the quantiles are stored."""
    return (np.arange(n_quantiles) + 0.5) / n_quantiles


@dataclass(frozen=True)
class NormalScores:
    """Per-feature empirical-CDF -> standard-normal transform.

    Attributes:
        quantiles: (m, d) the feature quantiles at :func:`plotting_positions` (m), each column
            non-decreasing.
        std: (d,) each feature's standard deviation (tail slope; 1 where it is 0).
    """

    quantiles: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, n_quantiles: int = DEFAULT_N_QUANTILES) -> NormalScores:
        """Fit on rows ``x`` (n, d); all-NaN rows (missing modality) are ignored.

        ``n_quantiles`` is capped at the number of observed rows n (then the quantiles are
        the order statistics themselves).
        """
        x = np.asarray(x, dtype=np.float64)
        x = x[~np.isnan(x).all(axis=1)]
        if len(x) < 2:
            raise ValueError(f"Normal scores need at least 2 observed rows, got {len(x)}.")
        if n_quantiles >= len(x):     # the order statistics, exactly (no interpolation)
            quantiles = np.sort(x, axis=0)
        else:
            quantiles = np.quantile(x, plotting_positions(n_quantiles), axis=0, method="hazen")
        return cls.from_quantiles(quantiles, x.std(axis=0))

    @classmethod
    def from_quantiles(cls, quantiles: np.ndarray, std: np.ndarray) -> NormalScores:
        """From (m, d) quantiles at :func:`plotting_positions` (e.g. a Spark sketch) and (d,)
        standard deviations; checks shapes and monotonicity."""
        quantiles = np.asarray(quantiles, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if quantiles.ndim != 2 or len(quantiles) < 2 or std.shape != quantiles.shape[1:]:
            raise ValueError(f"Normal scores need (m >= 2, d) quantiles and (d,) stds, got "
                             f"{quantiles.shape} and {std.shape}.")
        if not (np.isfinite(quantiles).all() and np.isfinite(std).all()):
            raise ValueError("Normal-score quantiles and stds must be finite.")
        if (np.diff(quantiles, axis=0) < 0).any():
            raise ValueError("Normal-score quantiles must be non-decreasing per feature.")
        return cls(quantiles, np.where(std > 0, std, 1.0))

    @property
    def dim(self) -> int:
        return int(self.quantiles.shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, d) normal scores of rows ``x`` (n, d); NaN rows (missing) stay NaN."""
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        for j in range(self.dim):
            out[:, j] = _feature_scores(x[:, j], self.quantiles[:, j], self.std[j])
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The stored arrays, keyed ``prefix + name``."""
        return {f"{prefix}quantiles": self.quantiles, f"{prefix}quantile_std": self.std}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, n_quantiles: int,
                    dim: int) -> NormalScores:
        """Inverse of :meth:`to_arrays`, checking shapes, finiteness and monotonicity."""
        return cls.from_quantiles(
            stored_array(arrays, f"{prefix}quantiles", (n_quantiles, dim), "preprocessing array"),
            stored_array(arrays, f"{prefix}quantile_std", (dim,), "preprocessing array"))


def _feature_scores(values: np.ndarray, quantiles: np.ndarray, std: float) -> np.ndarray:
    """(n,) normal scores of one feature's ``values`` from its (m,) sorted ``quantiles``."""
    knots, first = np.unique(quantiles, return_index=True)
    positions = plotting_positions(len(quantiles))
    runs = np.append(first, len(quantiles))
    # mid-rank of a run of equal quantiles: the mean plotting position over the run
    summed = np.concatenate([[0.0], np.cumsum(positions)])
    cdf = (summed[runs[1:]] - summed[runs[:-1]]) / np.diff(runs)
    z = ndtri(np.interp(values, knots, cdf))
    low, high = values < knots[0], values > knots[-1]
    z[low] = ndtri(cdf[0]) + (values[low] - knots[0]) / std
    z[high] = ndtri(cdf[-1]) + (values[high] - knots[-1]) / std
    return z
