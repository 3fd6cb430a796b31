"""Anomaly scores calibrated per missingness pattern.

The raw anomaly score -log p(observed blocks) of a normal row depends on which modalities it
has (fewer blocks, fewer terms). The calibrated score of a row is ``-log10`` of the training
tail probability of its raw score *among training rows with the same pattern* (the set of
observed modalities), so on normal rows it has nearly the same distribution whatever the
pattern, and one threshold, ``-log10(contamination)``, flags the same fraction of every
pattern's training rows.

The table is computed from mergeable statistics, so Spark builds it from per-partition
partial results and never collects rows: one histogram of ``BINS`` counts per pattern over
u = log1p(score - lo) (lo, hi: the training scores' range), merged by addition; each
pattern's quantiles at the tail probabilities :data:`TAILS` are read off the histogram (rows
spread evenly in u inside a bin: a resolution of about log1p(hi - lo) / BINS in u, i.e. a
relative 1e-4 of the score's distance to lo here). In memory the same two functions run on
one "partition", so both give the same table from the same scores.

Fallback for small patterns: a pattern with fewer than ``min_rows`` training rows (or not seen
in training) uses the table pooled over every training row with the same number of observed
modalities; when that pool is also too small, the table of all training rows.

Tail probabilities between stored quantiles are interpolated linearly in log10(tail); above
the largest stored quantile log10(tail) keeps falling at the slope of the last decade of the
table (an exponential tail), so rows beyond every training row keep their order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 1 << 14
"""Histogram bins per pattern."""

MIN_PATTERN_ROWS = 500
"""Training rows a pattern needs for its own table (else the fallback rule applies)."""

TAILS = np.concatenate([1.0 - np.arange(0, 199) * 0.005, 10.0 ** (-2.0 - np.arange(33) / 8)])
"""Tail probabilities P(score >= q) of the stored quantiles q: 1, 0.995, ..., 0.015, then
0.01 down to 1e-6 in eighths of a decade (a pattern stores those >= 1 / its rows)."""

Histograms = tuple[np.ndarray, np.ndarray]
"""(codes (P,) int64 sorted patterns, counts (P, BINS) float64: the rows' weights summed, so
a row of integer weight w counts as w rows)."""


def pattern_codes(observed: Sequence[np.ndarray]) -> np.ndarray:
    """(n,) int64 pattern of each row: bit m set when modality m (in model order) is observed.

    Args:
        observed: per modality, (n,) bool presence.
    """
    codes = np.zeros(observed[0].shape[0], dtype=np.int64)
    for bit, mask in enumerate(observed):
        codes |= np.asarray(mask, dtype=np.int64) << bit
    return codes


def n_blocks(code: int) -> int:
    """Number of observed modalities of pattern ``code``."""
    return int(code).bit_count()


def _unit(scores: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(n,) scores mapped to [0, 1] by log1p(score - lo) / log1p(hi - lo)."""
    span = np.log1p(hi - lo)
    if span == 0.0:
        return np.zeros_like(scores)
    return np.clip(np.log1p(np.maximum(scores - lo, 0.0)) / span, 0.0, 1.0)


def _from_unit(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + np.expm1(u * np.log1p(hi - lo))


def pattern_histograms(scores: np.ndarray, codes: np.ndarray, lo: float, hi: float,
                       bins: int = BINS, weights: np.ndarray | None = None) -> Histograms:
    """Per pattern present in ``codes``, the (weighted) counts of ``scores`` in ``bins`` bins
    of u.

    Args:
        scores: (n,) raw anomaly scores, all in [lo, hi].
        codes: (n,) patterns (:func:`pattern_codes`).
        lo, hi: the range of all training scores.
        weights: (n,) row weights > 0, or None (every row counts 1).
    """
    present, index = np.unique(codes, return_inverse=True)
    bin_index = np.minimum((_unit(scores, lo, hi) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index * bins + bin_index, weights=weights,
                         minlength=present.size * bins)
    return present.astype(np.int64), counts.reshape(present.size, bins).astype(np.float64)


def merge_histograms(a: Histograms, b: Histograms) -> Histograms:
    """Sum of two :func:`pattern_histograms` results (patterns united)."""
    codes = np.union1d(a[0], b[0])
    counts = np.zeros((codes.size, a[1].shape[1]), dtype=np.float64)
    for part_codes, part_counts in (a, b):
        counts[np.searchsorted(codes, part_codes)] += part_counts
    return codes, counts


def _order_statistics(counts: np.ndarray, ranks: np.ndarray, lo: float, hi: float
                      ) -> np.ndarray:
    """Approximate scores of 0-based ``ranks`` (m,) from a (BINS,) histogram of (weighted)
    counts: the rows of a bin spread evenly in u across it."""
    ends = np.cumsum(counts)
    b = np.minimum(np.searchsorted(ends, ranks, side="right"), counts.size - 1)
    inside = (ranks - (ends[b] - counts[b]) + 0.5) / np.maximum(counts[b], 1)
    return _from_unit((b + np.clip(inside, 0.0, 1.0)) / counts.size, lo, hi)


def _quantiles(counts: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Scores at the tail probabilities :data:`TAILS` (those >= 1 / n) of one histogram.

    Args:
        counts: (BINS,) histogram of n scores (n: the sum of their weights).
    Returns:
        (L,) non-decreasing quantiles at position (n - 1)(1 - tail) in ascending order,
        interpolated linearly between neighbouring order statistics (numpy's convention).
    """
    n = float(counts.sum())
    last = max(n - 1.0, 0.0)
    position = last * (1.0 - TAILS[1.0 / n <= TAILS])
    below = np.floor(position)
    low = _order_statistics(counts, below, lo, hi)
    high = _order_statistics(counts, np.minimum(below + 1, last), lo, hi)
    return np.maximum.accumulate(low + (high - low) * (position - below))


@dataclass(frozen=True)
class TailTable:
    """One group's quantiles: ``scores[j]`` has training tail probability ``TAILS[j]``.

    Attributes:
        n_rows: training rows of the group (the sum of their weights, rounded down).
        scores: (L,) non-decreasing raw anomaly scores.
    """

    n_rows: int
    scores: np.ndarray

    def log10_tail(self, raw: np.ndarray) -> np.ndarray:
        """(n,) log10 of the training tail probability of each raw score (n,)."""
        scores, first = np.unique(self.scores, return_index=True)
        logs = np.log10(TAILS[first])
        if scores.size == 1:
            return np.where(raw <= scores[0], 0.0, -np.inf)
        inside = np.interp(raw, scores, logs)
        reference = min(logs[-1] + 1.0, 0.0)
        q_ref = float(np.interp(reference, logs[::-1], scores[::-1]))
        width = max(scores[-1] - q_ref, 1e-12 * max(1.0, abs(scores[-1])))
        slope = (logs[-1] - reference) / width
        beyond = logs[-1] + slope * (raw - scores[-1])
        return np.where(raw > scores[-1], beyond, inside)


def _table(counts: np.ndarray, lo: float, hi: float) -> TailTable:
    return TailTable(int(counts.sum()), _quantiles(counts, lo, hi))


@dataclass(frozen=True)
class Calibration:
    """Per-pattern tail tables of the training anomaly scores.

    Attributes:
        modalities: modality names in bit order of the pattern codes.
        patterns: {code: its table} of each training pattern with ``min_rows`` rows or more.
        pooled: {number of observed modalities: table of all training rows with that many}.
        overall: the table of all training rows.
        min_rows: rows a pattern (or pool) needs to use its own table.
    """

    modalities: tuple[str, ...]
    patterns: dict[int, TailTable]
    pooled: dict[int, TailTable]
    overall: TailTable
    min_rows: int = MIN_PATTERN_ROWS

    def table(self, code: int) -> TailTable:
        """The table of pattern ``code``: its own, else its pool by block count, else all."""
        if code in self.patterns:
            return self.patterns[code]
        pool = self.pooled.get(n_blocks(code))
        return pool if pool is not None and pool.n_rows >= self.min_rows else self.overall

    def score(self, raw: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """(n,) calibrated score -log10(training tail probability within the row's pattern)
        of raw anomaly scores (n,) with patterns (n,)."""
        out = np.empty(raw.shape[0], dtype=np.float64)
        for code in np.unique(codes):
            rows = codes == code
            out[rows] = -self.table(int(code)).log10_tail(raw[rows])
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (floats round-trip exactly through Python's json)."""
        def table(t: TailTable) -> dict[str, Any]:
            return {"n_rows": t.n_rows, "scores": [float(v) for v in t.scores]}

        return {"modalities": list(self.modalities), "min_rows": self.min_rows,
                "tails": [float(v) for v in TAILS],
                "patterns": {str(c): table(t) for c, t in self.patterns.items()},
                "pooled": {str(k): table(t) for k, t in self.pooled.items()},
                "overall": table(self.overall)}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict`; refuses a table stored with other tail levels."""
        tails = np.asarray(document["tails"], dtype=np.float64)
        if tails.shape != TAILS.shape or not np.allclose(tails, TAILS, rtol=1e-12, atol=0):
            raise ValueError("The model's calibration table uses other tail levels than this "
                             "version of mmgmm-spark; retrain the model.")

        def table(t: Mapping[str, Any]) -> TailTable:
            return TailTable(int(t["n_rows"]), np.asarray(t["scores"], dtype=np.float64))

        return cls(tuple(document["modalities"]),
                   {int(c): table(t) for c, t in document["patterns"].items()},
                   {int(k): table(t) for k, t in document["pooled"].items()},
                   table(document["overall"]), int(document["min_rows"]))


def calibration_from_histograms(histograms: Histograms, lo: float, hi: float,
                                modalities: Sequence[str],
                                min_rows: int = MIN_PATTERN_ROWS) -> Calibration:
    """The :class:`Calibration` of merged :func:`pattern_histograms` over [lo, hi]."""
    codes, counts = histograms
    patterns = {int(c): _table(h, lo, hi) for c, h in zip(codes, counts, strict=True)
                if h.sum() >= min_rows}
    sizes = np.array([n_blocks(c) for c in codes])
    pooled = {int(k): _table(counts[sizes == k].sum(axis=0), lo, hi) for k in np.unique(sizes)}
    return Calibration(tuple(modalities), patterns, pooled, _table(counts.sum(axis=0), lo, hi),
                       min_rows)


def fit_calibration(scores: np.ndarray, codes: np.ndarray, modalities: Sequence[str],
                    min_rows: int = MIN_PATTERN_ROWS,
                    weights: np.ndarray | None = None) -> Calibration:
    """:func:`calibration_from_histograms` of in-memory training scores (n,), patterns (n,)
    and row weights (n,) (None: all 1; zero-weight rows are absent)."""
    if weights is not None:
        keep = np.asarray(weights) > 0
        scores, codes, weights = scores[keep], codes[keep], np.asarray(weights)[keep]
    lo, hi = float(scores.min()), float(scores.max())
    return calibration_from_histograms(pattern_histograms(scores, codes, lo, hi,
                                                          weights=weights),
                                       lo, hi, modalities, min_rows)
