"""Validated rows of multimodal data: per modality, which rows observe it and their values.

A modality is *missing* for a row when its whole block is NaN (or null in a table). Missing
blocks are stored compactly: ``values`` holds only the observed rows, ``observed`` says which.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from mmgmm_spark.core.modality import Modality


class DataValidationError(ValueError):
    """Input data that cannot be fitted or scored; the message says what and what to do."""


@dataclass(frozen=True)
class Block:
    """One modality's data for n rows.

    Attributes:
        observed: (n,) bool, True where the row observes the modality.
        values: (n_observed, d) float64 C-contiguous, the observed rows in row order.
    """

    observed: np.ndarray
    values: np.ndarray

    @property
    def all_observed(self) -> bool:
        return self.values.shape[0] == self.observed.shape[0]

    def take(self, rows: np.ndarray) -> Block:
        """The block restricted to the given sorted row indices."""
        position = np.cumsum(self.observed) - 1
        observed = self.observed[rows]
        return Block(observed, self.values[position[rows[observed]]])

    def dense(self) -> np.ndarray:
        """(n, d) float64 with NaN rows where the modality is missing."""
        out = np.full((self.observed.shape[0], self.values.shape[1]), np.nan)
        out[self.observed] = self.values
        return out


@dataclass(frozen=True)
class Batch:
    """Validated rows: one :class:`Block` per modality name, all with ``n_rows`` rows.

    Attributes:
        n_rows: number of rows.
        blocks: per modality name, its :class:`Block`.
        weights: (n_rows,) float64 row weights (finite, >= 0), or None: every row weighs 1.
            A row of integer weight w counts as w copies of the row in every statistic.
    """

    n_rows: int
    blocks: dict[str, Block]
    weights: np.ndarray | None = None

    def weights_where(self, rows: np.ndarray) -> np.ndarray | None:
        """The weights of the rows selected by the (n,) bool mask ``rows``, or None when the
        batch is unweighted (numpy's and scikit-learn's "every row weighs 1")."""
        return None if self.weights is None else self.weights[rows]

    @property
    def total_weight(self) -> float:
        """Sum of the row weights (the row count when unweighted)."""
        return float(self.n_rows if self.weights is None else self.weights.sum())

    def chunks(self, max_rows: int) -> Iterator[Batch]:
        """Consecutive row ranges of at most ``max_rows`` rows."""
        if self.n_rows <= max_rows:
            yield self
            return
        starts = {name: 0 for name in self.blocks}
        for start in range(0, self.n_rows, max_rows):
            stop = min(start + max_rows, self.n_rows)
            blocks = {}
            for name, block in self.blocks.items():
                observed = block.observed[start:stop]
                n_obs = int(np.count_nonzero(observed))
                blocks[name] = Block(observed, block.values[starts[name]: starts[name] + n_obs])
                starts[name] += n_obs
            yield Batch(stop - start, blocks,
                        None if self.weights is None else self.weights[start:stop])

    def take(self, rows: np.ndarray) -> Batch:
        """The rows at the given indices (sorted ascending)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        return Batch(len(rows), {name: b.take(rows) for name, b in self.blocks.items()},
                     None if self.weights is None else self.weights[rows])

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """The rows of all batches, in order (all must have the same modalities)."""
        names = list(batches[0].blocks)
        blocks = {name: Block(np.concatenate([b.blocks[name].observed for b in batches]),
                              np.concatenate([b.blocks[name].values for b in batches]))
                  for name in names}
        weighted = any(b.weights is not None for b in batches)
        weights = (np.concatenate([np.ones(b.n_rows) if b.weights is None else b.weights
                                   for b in batches]) if weighted else None)
        return Batch(sum(b.n_rows for b in batches), blocks, weights)

    def complete_rows(self) -> np.ndarray:
        """(n,) bool, True where the row observes every modality."""
        return np.logical_and.reduce([b.observed for b in self.blocks.values()])


def check_block(modality: Modality, observed: np.ndarray, values: np.ndarray,
                source: str = "data") -> Block:
    """Validate one modality's observed rows and return its :class:`Block`.

    Args:
        modality: the modality the values belong to.
        observed: (n,) bool, rows present (not null) in the source.
        values: (n_present, d) numbers for the present rows; an all-NaN row also counts
            as missing.
        source: what the data is called in error messages (a table name, "data", ...).

    Raises:
        DataValidationError: wrong width, partly-NaN rows or infinite values, naming the
            modality and the number of offending rows.
    """
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != modality.dim:
        width = values.shape[1] if values.ndim == 2 else f"{values.ndim}-d array"
        raise DataValidationError(
            f"{source}: modality '{modality.name}' has feature width {width}, expected "
            f"{modality.dim}. Fix the features or set the modality's dim (config `dim`, "
            f"Modality(dim=...)) to {width if values.ndim == 2 else 'match'}."
        )
    dtype = values.dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise DataValidationError(
            f"{source}: modality '{modality.name}' must hold real numbers, got dtype {dtype}."
        )
    values = np.ascontiguousarray(values, dtype=np.float64)
    nan = np.isnan(values)
    nan_rows = nan.all(axis=1)
    partly = int(np.count_nonzero(nan.any(axis=1) & ~nan_rows))
    if partly:
        raise DataValidationError(
            f"{source}: modality '{modality.name}' has {partly} row(s) with some but not all "
            "features NaN. A missing modality must be entirely NaN/null; impute or drop the "
            "partial values upstream."
        )
    infinite = int(np.count_nonzero(np.isinf(values).any(axis=1)))
    if infinite:
        raise DataValidationError(
            f"{source}: modality '{modality.name}' has {infinite} row(s) with infinite values. "
            "Clean or drop them before fitting or scoring."
        )
    observed = np.asarray(observed, dtype=bool).copy()
    if nan_rows.any():
        observed[np.flatnonzero(observed)[nan_rows]] = False
        values = np.ascontiguousarray(values[~nan_rows])
    return Block(observed, values)


def weight_problems(n_rows: int, invalid: int, negative: int, total: float) -> str | None:
    """What is wrong with a weight column, from its counts (None when nothing is).

    Args:
        n_rows: rows of the column.
        invalid: rows whose weight is null, NaN or infinite.
        negative: rows whose weight is < 0.
        total: sum of the valid weights.
    """
    if invalid:
        return f"{invalid} of {n_rows} row(s) have a null, NaN or infinite weight"
    if negative:
        return f"{negative} of {n_rows} row(s) have a negative weight"
    if not total > 0:
        return f"all {n_rows} weights are zero"
    return None


def weight_error(problem: str, column: str, source: str) -> DataValidationError:
    """The one error for a bad weight column: what is wrong and what to do."""
    return DataValidationError(
        f"{source}: weight column '{column}': {problem}. Weights must be finite and >= 0, "
        "not all zero: fix or drop those rows, or fit without weights.")


def check_weights(weights: object, n_rows: int, column: str = "sample_weight",
                  source: str = "data") -> np.ndarray:
    """(n_rows,) float64 row weights, validated (finite, >= 0, not all zero).

    Raises:
        DataValidationError: naming ``column``, the number of bad rows and what to do.
    """
    values = np.asarray(weights)
    if values.shape != (n_rows,) or not (np.issubdtype(values.dtype, np.number)
                                         or values.dtype == bool):
        raise DataValidationError(
            f"{source}: weight column '{column}' must be {n_rows} numbers (one per row), got "
            f"shape {values.shape} of dtype {values.dtype}.")
    values = np.ascontiguousarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    problem = weight_problems(n_rows, int(np.count_nonzero(~finite)),
                              int(np.count_nonzero(values[finite] < 0)),
                              float(values[finite].sum()))
    if problem is not None:
        raise weight_error(problem, column, source)
    return values


def check_batch(n_rows: int, blocks: dict[str, Block], source: str = "data",
                weights: np.ndarray | None = None) -> Batch:
    """Build a :class:`Batch` (``weights``: validated (n_rows,) or None), rejecting rows that
    observe no modality at all."""
    if n_rows == 0:
        raise DataValidationError(f"{source}: no rows. Check the input table or filter.")
    nothing = n_rows - int(np.count_nonzero(
        np.logical_or.reduce([b.observed for b in blocks.values()])))
    if nothing:
        raise DataValidationError(
            f"{source}: {nothing} row(s) observe no modality at all (every block of "
            f"{list(blocks)} NaN/null). "
            "Drop them before fitting or scoring: they carry no information."
        )
    return Batch(n_rows, blocks, weights)


def batch_from_arrays(data: Mapping[str, np.ndarray], modalities: tuple[Modality, ...],
                      source: str = "data", sample_weight: object | None = None) -> Batch:
    """Validate a dict of (n, d_m) arrays (NaN rows = missing modality) into a :class:`Batch`.

    ``sample_weight``: (n,) row weights (see :func:`check_weights`), or None.
    """
    if not isinstance(data, Mapping):
        raise TypeError(
            f"{source} must be a dict of (n, d) arrays keyed by modality name, "
            f"got {type(data).__name__}."
        )
    expected = [m.name for m in modalities]
    unknown = sorted(set(data) - set(expected))
    absent = [name for name in expected if name not in data]
    if unknown or absent:
        raise DataValidationError(
            f"{source}: keys {sorted(data)} do not match the model's modalities {expected} "
            f"(missing: {absent}, unknown: {unknown}). Pass one array per modality; use a "
            "NaN row where an entity lacks a modality."
        )
    counts = {m.name: np.shape(data[m.name])[0] if np.ndim(data[m.name]) else 0 for m in modalities}
    if len(set(counts.values())) != 1:
        raise DataValidationError(
            f"{source}: modalities have different row counts {counts}; row i of every "
            "array must be the same entity."
        )
    n_rows = next(iter(counts.values()))
    blocks = {m.name: check_block(m, np.ones(n_rows, dtype=bool), data[m.name], source)
              for m in modalities}
    weights = None if sample_weight is None else check_weights(sample_weight, n_rows,
                                                               source=source)
    return check_batch(n_rows, blocks, source, weights)
