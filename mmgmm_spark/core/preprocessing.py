"""Per-modality preprocessing: standardisation and an optional PCA projection, from moments.

Everything a :class:`ModalityPreprocessor` needs is in three mergeable statistics of the rows
that observe the modality (:class:`Moments`): the count n, the sum (d,) and the centred
scatter sum_i (x_i - mean)(x_i - mean)^T (d, d). Two partial :class:`Moments` merge exactly
(Chan et al.'s pairwise update), so a Spark ``treeAggregate`` can compute them; the projection
is then the eigendecomposition of the standardised covariance, which equals scikit-learn's
``StandardScaler`` followed by ``PCA`` (up to the sign of each component).

The projection keeps the top q principal components and, unless ``residual=False``, models
the discarded d - q directions as isotropic Gaussian noise (variance = mean of the discarded
eigenvalues, as probabilistic PCA does). :meth:`ModalityPreprocessor.residual_log_density`
returns that noise term plus the log-Jacobians of the standardisation and the whitening, so a
mixture's log-likelihood of the projected rows plus this term is a proper log-density of the
*input* rows: it is comparable across q and with or without standardisation (BIC can choose
both) and keeps the reconstruction error in the anomaly score.

Optionally (``normal_scores``) every feature is first replaced by its normal score
(:class:`mmgmm_spark.core.marginals.NormalScores`, from stored quantiles): the mixture is then
a Gaussian-copula mixture, robust to skewed, heavy-tailed and discrete features. Its
log-density is that of the normal scores (the marginal transform's Jacobian is not added: the
empirical CDF has no useful derivative), so candidates are compared by BIC only among fits with
the same marginal transform.

Stored as plain arrays + JSON (:meth:`to_arrays` / :meth:`from_arrays`), never pickled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from mmgmm_spark.core.batch import Batch, Block
from mmgmm_spark.core.marginals import DEFAULT_N_QUANTILES, NormalScores
from mmgmm_spark.core.params import stored_array

LOG_2PI = float(np.log(2.0 * np.pi))
VARIANCE_FLOOR = 1e-9
"""Relative floor on eigenvalues (times the mean eigenvalue), so whitening never divides by 0."""


@dataclass(frozen=True)
class Moments:
    """Mergeable first and second moments of n rows of one modality.

    With row weights every sum is weighted and n is the total weight (a row of integer
    weight w counts as w copies of it).

    Attributes:
        count: number of rows n (the sum of their weights).
        total: (d,) (weighted) sum of the rows.
        scatter: (d, d) (weighted) centred scatter sum_i w_i (x_i - mean)(x_i - mean)^T.
    """

    count: float
    total: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, weights: np.ndarray | None = None) -> Moments:
        """Moments of the rows of ``x`` (n, d) that are not entirely NaN (missing), with
        row ``weights`` (n,) (None: all 1)."""
        x = np.asarray(x, dtype=np.float64)
        present = ~np.isnan(x).all(axis=1)
        x = x[present]
        if np.isnan(x).any():
            raise ValueError("Rows must be entirely observed or entirely NaN (missing).")
        if weights is None:
            mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
            centred = x - mean
            return cls(len(x), x.sum(axis=0), centred.T @ centred)
        w = np.asarray(weights, dtype=np.float64)[present]
        count, total = float(w.sum()), w @ x
        centred = x - (total / count if count > 0 else 0.0)
        return cls(count, total, (centred * w[:, None]).T @ centred)

    @property
    def mean(self) -> np.ndarray:
        return self.total / self.count

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both row sets (exact; associative and commutative)."""
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        scatter = (self.scatter + other.scatter
                   + np.outer(delta, delta) * (self.count * other.count / n))
        return Moments(n, self.total + other.total, scatter)


@dataclass
class ModalityPreprocessor:
    """Standardise a modality's block and optionally project it onto q principal components.

    ``transform(x) = ((g(x) - mean) / scale) @ components.T / sqrt(explained_variance)`` when
    ``whiten``, without the last division otherwise; without a projection ``components`` is
    None and the output is the standardised block; ``g`` is the marginal transform to normal
    scores when ``marginal`` is set, else the identity.

    Attributes:
        mean: (d,) subtracted mean (zeros when not standardising).
        scale: (d,) divisor (population std, 1 for constant features, as ``StandardScaler``).
        components: (q, d) principal axes in the standardised space, or None.
        explained_variance: (q,) variance along each axis (n - 1 denominator, as ``PCA``).
        noise_variance: variance of each discarded direction (0 when q = d or no projection).
        whiten: whether projected coordinates are divided by sqrt(explained_variance).
        residual: whether :meth:`residual_log_density` includes the discarded directions.
        n_rows: rows the statistics came from.
        marginal: the :class:`NormalScores` applied first, or None.
    """

    mean: np.ndarray
    scale: np.ndarray
    components: np.ndarray | None = None
    explained_variance: np.ndarray | None = None
    noise_variance: float = 0.0
    whiten: bool = True
    residual: bool = True
    n_rows: int = 0
    all_explained_variance: np.ndarray | None = field(default=None, repr=False)
    marginal: NormalScores | None = None

    # ------------------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, x: np.ndarray, n_components: int | str | None = "auto", *,
            standardise: bool = True, whiten: bool = True, residual: bool = True,
            variance: float = 0.95, rows_per_dim: int = 10, normal_scores: bool = False,
            n_quantiles: int = DEFAULT_N_QUANTILES) -> ModalityPreprocessor:
        """Fit on ``x`` (n, d); NaN rows (missing modality) are ignored.

        With ``normal_scores`` the features are first mapped to normal scores from
        ``n_quantiles`` quantiles, and the moments are those of the scores. See
        :meth:`fit_from_moments` for the other arguments.
        """
        marginal = NormalScores.fit(x, n_quantiles) if normal_scores else None
        moments = Moments.of(x if marginal is None else marginal.transform(x))
        return cls.fit_from_moments(moments, n_components, standardise=standardise,
                                    whiten=whiten, residual=residual, variance=variance,
                                    rows_per_dim=rows_per_dim, marginal=marginal)

    @classmethod
    def fit_from_moments(cls, moments: Moments, n_components: int | str | None = "auto", *,
                         standardise: bool = True, whiten: bool = True, residual: bool = True,
                         variance: float = 0.95, rows_per_dim: int = 10,
                         marginal: NormalScores | None = None) -> ModalityPreprocessor:
        """Fit from mergeable :class:`Moments` (as a Spark aggregation produces them).

        Args:
            moments: count, sum (d,) and centred scatter (d, d) of the training rows.
            n_components: q; None for no projection; "auto" for the label-free rule of
                :func:`auto_n_components`.
            standardise: centre and scale each feature first (a projection always centres).
            whiten: divide projected coordinates by their standard deviation.
            residual: model the discarded directions as isotropic noise in the density.
            variance: explained-variance target of the "auto" rule.
            rows_per_dim: the "auto" rule keeps at most n / rows_per_dim components.
            marginal: the fitted normal-score transform the moments are of (None: none).
        """
        n, d = moments.count, moments.total.shape[0]
        if n < 2:
            raise ValueError(f"Preprocessing needs at least 2 observed rows, got {n}.")
        centre = standardise or n_components is not None        # PCA always centres
        mean = moments.mean if centre else np.zeros(d)
        if standardise:
            scale = np.sqrt(np.clip(np.diag(moments.scatter) / n, 0.0, None))
            scale[scale < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)] = 1.0
        else:
            scale = np.ones(d)
        if n_components is None:
            return cls(mean, scale, whiten=whiten, residual=residual, n_rows=n,
                       marginal=marginal)
        cov = moments.scatter / (n - 1) / np.outer(scale, scale)
        eigenvalues, eigenvectors = np.linalg.eigh(cov)
        order = np.argsort(eigenvalues)[::-1]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order]
        q = (auto_n_components(eigenvalues, n, variance, rows_per_dim)
             if n_components == "auto" else int(n_components))
        if not 1 <= q <= d:
            raise ValueError(f"n_components must be in [1, {d}] or 'auto'/None, got {q}.")
        floor = VARIANCE_FLOOR * max(float(eigenvalues.mean()), VARIANCE_FLOOR)
        kept = np.maximum(eigenvalues[:q], floor)
        noise = max(float(eigenvalues[q:].mean()), floor) if q < d else 0.0
        components = _deterministic_signs(eigenvectors[:, :q].T)
        return cls(mean, scale, components, kept, noise, whiten, residual, n,
                   all_explained_variance=eigenvalues, marginal=marginal)

    @classmethod
    def identity(cls, dim: int) -> ModalityPreprocessor:
        """The preprocessor that changes nothing (no standardisation, no projection)."""
        return cls(np.zeros(dim), np.ones(dim))

    # ------------------------------------------------------------------------ applying
    @property
    def input_dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def output_dim(self) -> int:
        return self.input_dim if self.components is None else int(self.components.shape[0])

    def standardised(self, x: np.ndarray) -> np.ndarray:
        """(n, d) (g(x) - mean) / scale (g: the normal scores, if any); NaN rows stay NaN."""
        x = np.asarray(x, dtype=np.float64)
        if self.marginal is not None:
            x = self.marginal.transform(x)
        return (x - self.mean) / self.scale

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, q) projected (or (n, d) standardised) rows; NaN rows (missing) stay NaN."""
        z = self.standardised(x)
        if self.components is None:
            return z
        t = z @ self.components.T
        return t / np.sqrt(self.explained_variance) if self.whiten else t

    def residual_log_density(self, x: np.ndarray) -> np.ndarray:
        """(n,) what to add to the transformed rows' log-density to get the input rows'.

        The log-Jacobians of the standardisation and of the whitening, plus (with
        ``residual``) the log-density of the reconstruction error under isotropic
        N(0, noise_variance) in the d - q discarded directions; NaN on missing rows. With it,
        likelihoods with and without standardisation or projection are comparable (BIC).
        """
        z = self.standardised(x)
        missing = np.isnan(z).all(axis=1)
        out = np.full(len(z), -float(np.log(self.scale).sum()))
        if self.components is not None:
            if self.whiten:
                out -= 0.5 * float(np.log(self.explained_variance).sum())
            if self.residual and self.noise_variance > 0:
                t = z @ self.components.T
                error = ((z * z).sum(axis=1) - (t * t).sum(axis=1)).clip(min=0.0)
                rest = self.input_dim - self.output_dim
                out -= 0.5 * (error / self.noise_variance
                              + rest * (LOG_2PI + np.log(self.noise_variance)))
        out[missing] = np.nan
        return out

    def n_parameters(self) -> int:
        """Free parameters of the projection + residual model, counted for BIC."""
        if self.components is None:
            return 0
        d, q = self.input_dim, self.output_dim
        return int(d * q - q * (q + 1) // 2 + (1 if self.residual and q < d else 0))

    # ---------------------------------------------------------------------- persistence
    def to_arrays(self, prefix: str) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays keyed ``prefix + field``, JSON metadata) describing the preprocessor."""
        arrays = {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale}
        if self.components is not None:
            arrays[f"{prefix}components"] = self.components
            arrays[f"{prefix}explained_variance"] = self.explained_variance
        if self.marginal is not None:
            arrays.update(self.marginal.to_arrays(prefix))
        meta = {"n_quantiles": 0 if self.marginal is None else len(self.marginal.quantiles),
                "input_dim": self.input_dim, "output_dim": self.output_dim,
                "projected": self.components is not None,
                "noise_variance": float(self.noise_variance), "whiten": bool(self.whiten),
                "residual": bool(self.residual), "n_rows": int(self.n_rows)}
        return arrays, meta

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict,
                    prefix: str) -> ModalityPreprocessor:
        """Inverse of :meth:`to_arrays`, checking every shape, dtype and value."""
        d, q = int(meta["input_dim"]), int(meta["output_dim"])
        mean = _checked(arrays, f"{prefix}mean", (d,))
        scale = _checked(arrays, f"{prefix}scale", (d,))
        if np.any(scale <= 0):
            raise ValueError(f"'{prefix}scale' must be positive.")
        components = variance = None
        if meta["projected"]:
            components = _checked(arrays, f"{prefix}components", (q, d))
            variance = _checked(arrays, f"{prefix}explained_variance", (q,))
            if np.any(variance <= 0):
                raise ValueError(f"'{prefix}explained_variance' must be positive.")
        noise = float(meta["noise_variance"])
        if noise < 0 or not np.isfinite(noise):
            raise ValueError("noise_variance must be finite and >= 0.")
        n_quantiles = int(meta.get("n_quantiles", 0))
        marginal = (NormalScores.from_arrays(arrays, prefix, n_quantiles, d) if n_quantiles
                    else None)
        return cls(mean, scale, components, variance, noise, bool(meta["whiten"]),
                   bool(meta["residual"]), int(meta["n_rows"]), marginal=marginal)


def batch_moments(batch: Batch) -> dict[str, Moments]:
    """{modality: :class:`Moments` of the rows of ``batch`` that observe it (weighted by the
    batch's row weights)}."""
    return {name: Moments.of(block.values, batch.weights_where(block.observed))
            for name, block in batch.blocks.items()}


def merge_moments(a: Mapping[str, Moments], b: Mapping[str, Moments]) -> dict[str, Moments]:
    """Per modality, the moments of the union of both row sets."""
    return {name: a[name].merge(b[name]) for name in a}


def preprocess_batch(batch: Batch,
                     preprocessors: Mapping[str, ModalityPreprocessor]) -> Batch:
    """``batch`` with every modality's observed rows (n_obs, d) transformed to (n_obs, q)
    (row weights kept)."""
    return Batch(batch.n_rows, {
        name: Block(block.observed,
                    np.ascontiguousarray(preprocessors[name].transform(block.values)))
        for name, block in batch.blocks.items()}, batch.weights)


def auto_n_components(eigenvalues: np.ndarray, n_rows: int, variance: float = 0.95,
                      rows_per_dim: int = 10) -> int:
    """The label-free default q for eigenvalues (d,) sorted descending.

    Keep all d dimensions when a full covariance of them is well determined
    (d <= n / rows_per_dim); otherwise the fewest components explaining ``variance`` of the
    total, capped at n / rows_per_dim (at least 1).
    """
    d = len(eigenvalues)
    cap = max(1, n_rows // rows_per_dim)
    if d <= cap:
        return d
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    needed = int(np.searchsorted(np.cumsum(eigenvalues) / total, variance) + 1)
    return int(min(needed, cap, d))


def _deterministic_signs(components: np.ndarray) -> np.ndarray:
    """(q, d) components with the largest-magnitude entry of each made positive."""
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


def _checked(arrays: dict[str, np.ndarray], key: str, shape: tuple[int, ...]) -> np.ndarray:
    return stored_array(arrays, key, shape, "preprocessing array")
