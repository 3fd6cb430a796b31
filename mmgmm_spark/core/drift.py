"""Distribution drift against a training reference: binned counts, PSI and KS statistic.

A :class:`DriftReference` holds, for each monitored column (the anomaly score, each
modality's log-likelihood), interior bin edges (quantiles of a training sample, so the bins
are about equally full) and the counts of *all* training rows in those bins, plus the share
of training rows missing each modality. A later population is binned on the same edges:

* population stability index ``PSI = sum_i (a_i - e_i) ln(a_i / e_i)`` over the bin shares
  (expected ``e`` from the reference, actual ``a``), each share floored at ``PSI_FLOOR`` so
  an empty bin does not give an infinite value;
* Kolmogorov-Smirnov statistic ``max_i |E_i - A_i|`` of the two cumulative shares at the bin
  edges: the two-sample KS statistic restricted to the edges (never above the exact one,
  and within the largest bin share of it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmgmm_spark.core.quantiles import as_count, weighted_quantile

PSI_FLOOR = 1e-4
REFERENCE_BINS = 20
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
"""Quantiles logged for every monitored column."""


@dataclass(frozen=True)
class ColumnReference:
    """Training distribution of one column.

    Attributes:
        edges: (B - 1,) increasing interior bin edges (bin i holds edges[i-1] <= v < edges[i]).
        counts: (B,) training rows per bin (finite values only; with row weights, the sum
            of their weights).
        quantiles: {q: value} of the training values (from the sample), for ``QUANTILES``.
    """

    edges: np.ndarray
    counts: np.ndarray
    quantiles: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DriftReference:
    """What drift is measured against: {column: ColumnReference}, {modality: missing share}."""

    columns: dict[str, ColumnReference]
    missing_share: dict[str, float]
    n_rows: int | float

    def to_dict(self) -> dict:
        """JSON-serialisable form (stored with the model)."""
        return {"n_rows": self.n_rows, "missing_share": self.missing_share,
                "columns": {name: {"edges": c.edges.tolist(), "counts": c.counts.tolist(),
                                   "quantiles": {str(q): v for q, v in c.quantiles.items()}}
                            for name, c in self.columns.items()}}

    @classmethod
    def from_dict(cls, document: dict) -> DriftReference:
        columns = {name: ColumnReference(np.asarray(c["edges"], dtype=np.float64),
                                         np.asarray(c["counts"], dtype=np.float64),
                                         {float(q): float(v) for q, v in c["quantiles"].items()})
                   for name, c in document["columns"].items()}
        return cls(columns, {k: float(v) for k, v in document["missing_share"].items()},
                   as_count(document["n_rows"]))


def _finite(values: np.ndarray, weights: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """The finite values of rows with a weight > 0 (n,) and their weights (None: all 1)."""
    keep = np.isfinite(values) if weights is None else np.isfinite(values) & (weights > 0)
    return values[keep], None if weights is None else weights[keep]


def quantile_edges(values: np.ndarray, bins: int = REFERENCE_BINS,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """(<= bins - 1,) distinct interior edges: the 1/bins .. (bins-1)/bins (weighted)
    quantiles of the finite ``values`` (n,) with row ``weights`` (n,) (None: all 1)."""
    finite, weights = _finite(values, weights)
    if finite.size == 0:
        return np.zeros(0)
    return np.unique(weighted_quantile(finite, np.arange(1, bins) / bins, weights))


def bin_counts(values: np.ndarray, edges: np.ndarray,
               weights: np.ndarray | None = None) -> np.ndarray:
    """(len(edges) + 1,) float64 counts (sums of row ``weights``, None: all 1) of the
    finite ``values`` (n,) per bin of ``edges``."""
    finite, weights = _finite(values, weights)
    return np.bincount(np.searchsorted(edges, finite, side="right"), weights=weights,
                       minlength=len(edges) + 1).astype(np.float64)


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of ``actual`` (B,) counts against ``expected`` (B,)."""
    e = np.maximum(_shares(expected), PSI_FLOOR)
    a = np.maximum(_shares(actual), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest gap of the cumulative shares of ``expected`` and ``actual`` (B,) counts."""
    return float(np.max(np.abs(np.cumsum(_shares(expected)) - np.cumsum(_shares(actual)))))


def reference_from_values(values: dict[str, np.ndarray], sample: dict[str, np.ndarray],
                          modality_columns: dict[str, str]) -> DriftReference:
    """The reference of in-memory training ``values`` ({column: (n,)}, NaN where missing),
    with edges and quantiles from ``sample`` ({column: (s,)}); ``modality_columns``:
    {modality: its column}, whose NaNs are the rows missing it."""
    edges = {name: quantile_edges(v) for name, v in sample.items()}
    counts = {name: bin_counts(values[name], e) for name, e in edges.items()}
    n_rows = len(next(iter(values.values())))
    missing = {m: int(np.isnan(values[c]).sum()) for m, c in modality_columns.items()}
    return assemble_reference(edges, counts, missing, n_rows, sample)


def assemble_reference(edges: dict[str, np.ndarray], counts: dict[str, np.ndarray],
                       missing: dict[str, float], n_rows: float,
                       sample: dict[str, np.ndarray],
                       sample_weights: np.ndarray | None = None) -> DriftReference:
    """A :class:`DriftReference` from per-column edges and counts and per-modality missing
    counts over ``n_rows`` rows (sums of weights when weighted), quantiles from ``sample``
    ({column: (s,)}) with row ``sample_weights`` (s,) (None: all 1)."""
    columns = {}
    for name, e in edges.items():
        finite, weights = _finite(sample[name], sample_weights)
        q = (weighted_quantile(finite, np.array(QUANTILES), weights) if finite.size
             else np.full(len(QUANTILES), np.nan))
        columns[name] = ColumnReference(e, counts[name], dict(zip(QUANTILES, map(float, q),
                                                                   strict=True)))
    return DriftReference(columns, {m: n / n_rows for m, n in missing.items()},
                          as_count(n_rows))
