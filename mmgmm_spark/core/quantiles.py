"""Quantiles of weighted values, with numpy's default (linear) interpolation.

A row of integer weight w counts as w copies of it, so ``weighted_quantile(x, q, w)`` equals
``np.quantile(np.repeat(x, w), q)``. With non-integer weights the same rule is applied to the
cumulative weights: the 0-based "order statistic" r is the smallest value whose cumulative
weight exceeds r, and the quantile sits at position (W - 1) q, W the total weight (clipped at
0 when W < 1). Zero-weight rows are absent.
"""

from __future__ import annotations

import numpy as np


def lerp(a: float, b: float, t: float) -> float:
    """numpy's linear interpolation between neighbouring order statistics."""
    if a == b:
        return a
    difference = b - a
    return b - difference * (1 - t) if t >= 0.5 else a + difference * t


def order_statistics(sorted_values: np.ndarray, cumulative: np.ndarray,
                     ranks: np.ndarray) -> np.ndarray:
    """Values (m,) of 0-based ``ranks`` (m,) among weighted values.

    Args:
        sorted_values: (n,) ascending values.
        cumulative: (n,) cumulative weights of ``sorted_values`` (all weights > 0).
        ranks: (m,) 0-based ranks in [0, total weight).
    """
    index = np.searchsorted(cumulative, ranks, side="right")
    return sorted_values[np.minimum(index, sorted_values.size - 1)]


def weighted_quantile(values: np.ndarray, q: float | np.ndarray,
                      weights: np.ndarray | None = None) -> float | np.ndarray:
    """The ``q`` quantile(s) of ``values`` (n,) with row ``weights`` (n,) (None: all 1).

    Equal to ``np.quantile(np.repeat(values, weights), q)`` for integer weights.
    """
    values = np.asarray(values, dtype=np.float64)
    if weights is None:
        result = np.quantile(values, q)
        return float(result) if np.ndim(q) == 0 else result
    keep = np.asarray(weights) > 0
    order = np.argsort(values[keep], kind="stable")
    ordered, cumulative = values[keep][order], np.cumsum(np.asarray(weights)[keep][order])
    total = cumulative[-1]
    position = np.maximum(total - 1.0, 0.0) * np.asarray(q, dtype=np.float64)
    below = np.floor(position)
    low = order_statistics(ordered, cumulative, below)
    high = order_statistics(ordered, cumulative, np.minimum(below + 1, max(total - 1.0, 0.0)))
    result = np.array([lerp(a, b, t) for a, b, t in
                       zip(np.atleast_1d(low), np.atleast_1d(high),
                           np.atleast_1d(position - below), strict=True)])
    return float(result[0]) if np.ndim(q) == 0 else result


def as_count(weight: float) -> int | float:
    """A total weight as a row count: an int when it is a whole number (every integer
    weighting, and no weights), else the float."""
    return int(weight) if float(weight).is_integer() else float(weight)
