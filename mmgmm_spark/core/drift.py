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


# ------------------------------------------------------------------ a population's profile
GRID_BINS = 2048
"""Equal-width bins of the quantile grid (:func:`quantile_grid`)."""


def quantile_grid(edges: np.ndarray, bins: int = GRID_BINS) -> np.ndarray:
    """(bins + 1,) equal-width edges over three times the span of a column's reference
    ``edges`` (B - 1,) (one span below the first edge and one above the last): the
    histogram a population's quantiles are read from (:func:`grid_quantiles`)."""
    if edges.size == 0:
        return np.linspace(-1.0, 1.0, bins + 1)
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else max(abs(lo), 1.0)
    return np.linspace(lo - span, hi + span, bins + 1)


def grid_quantiles(grid: np.ndarray, counts: np.ndarray,
                   quantiles: tuple[float, ...] = QUANTILES) -> dict[float, float]:
    """{q: value}: the q-quantiles of the population counted by ``counts`` (G + 2,) on
    ``grid`` (G + 1,), by linear interpolation within the bin holding them (to within one
    bin width, span * 3 / G); a quantile in an open end bin is that end of the grid; NaN
    for an empty population."""
    total = counts.sum()
    if not total:
        return {q: float("nan") for q in quantiles}
    cumulative = np.cumsum(counts)
    out = {}
    for q in quantiles:
        rank = q * total
        b = int(np.searchsorted(cumulative, rank, side="left"))
        if b == 0 or b == len(counts) - 1:
            out[q] = float(grid[0] if b == 0 else grid[-1])
            continue
        below = cumulative[b - 1]
        t = (rank - below) / counts[b] if counts[b] else 0.0
        out[q] = float(grid[b - 1] + t * (grid[b] - grid[b - 1]))
    return out


@dataclass(frozen=True)
class Profile:
    """A population's distribution on a reference's bins: additive counts, so the profile
    of a population that changed by some rows is the old profile minus the profile of their
    old values plus that of their new ones.

    Attributes:
        n_rows: rows profiled.
        n_flagged: rows flagged ``is_anomaly``.
        counts: {column: (B + 1,) rows per reference bin, then the rows whose value is NaN}.
        grid: {column: (G + 2,) rows per bin of the column's :func:`quantile_grid`}.
    """

    n_rows: int
    n_flagged: int
    counts: dict[str, np.ndarray]
    grid: dict[str, np.ndarray]

    def plus(self, other: Profile, sign: int = 1) -> Profile:
        """The profile of this population with ``other``'s rows added (``sign`` 1) or taken
        out (-1)."""
        return Profile(self.n_rows + sign * other.n_rows, self.n_flagged + sign * other.n_flagged,
                       {n: c + sign * other.counts[n] for n, c in self.counts.items()},
                       {n: c + sign * other.grid[n] for n, c in self.grid.items()})

    def bins(self, column: str) -> np.ndarray:
        """(B,) rows per reference bin of ``column`` (finite values)."""
        return self.counts[column][:-1]

    def missing_share(self, column: str) -> float:
        """Share of rows whose ``column`` is NaN (the modality is missing)."""
        return float(self.counts[column][-1] / self.n_rows) if self.n_rows else 0.0

    def fraction_over_threshold(self) -> float:
        return self.n_flagged / self.n_rows if self.n_rows else 0.0

    def quantiles(self, column: str, reference: DriftReference) -> dict[float, float]:
        """:func:`grid_quantiles` of ``column`` (NaN values excluded)."""
        return grid_quantiles(quantile_grid(reference.columns[column].edges), self.grid[column])

    def to_dict(self) -> dict:
        return {"n_rows": self.n_rows, "n_flagged": self.n_flagged,
                "counts": {n: c.tolist() for n, c in self.counts.items()},
                "grid": {n: c.tolist() for n, c in self.grid.items()}}

    @classmethod
    def from_dict(cls, document: dict) -> Profile:
        return cls(int(document["n_rows"]), int(document["n_flagged"]),
                   {n: np.asarray(c, np.int64) for n, c in document["counts"].items()},
                   {n: np.asarray(c, np.int64) for n, c in document["grid"].items()})


def empty_profile(reference: DriftReference) -> Profile:
    """The profile of no rows on ``reference``'s bins."""
    return Profile(0, 0, {n: np.zeros(len(c.edges) + 2, np.int64)
                          for n, c in reference.columns.items()},
                   {n: np.zeros(GRID_BINS + 2, np.int64) for n in reference.columns})


def profile_values(values: dict[str, np.ndarray], flagged: np.ndarray,
                   reference: DriftReference) -> Profile:
    """The profile of n rows given as {column: (n,) values, NaN = missing} and (n,) bool
    ``flagged``."""
    counts, grid = {}, {}
    for name, column in reference.columns.items():
        v = np.asarray(values[name], np.float64)
        counts[name] = np.append(bin_counts(v, column.edges).astype(np.int64),
                                 np.isnan(v).sum())
        grid[name] = bin_counts(v, quantile_grid(column.edges)).astype(np.int64)
    return Profile(len(flagged), int(np.count_nonzero(flagged)), counts, grid)
