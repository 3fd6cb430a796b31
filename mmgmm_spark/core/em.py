"""The EM loop, independent of where the data lives.

A *statistics pass* is any function ``params -> SufficientStats`` over all rows: a loop over
in-memory chunks, or a Spark job that maps partitions and reduces with ``treeAggregate``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import DegenerateComponentWarning, MixtureParams
from mmgmm_spark.core.stats import SufficientStats

StatsPass = Callable[[MixtureParams], SufficientStats]


class ConvergenceWarning(UserWarning):
    """EM stopped at ``max_iter`` before the lower bound changed by less than ``tol``."""


@dataclass(frozen=True)
class IterationReport:
    """What one EM iteration measured: the mean log-likelihood of the parameters it started from."""

    iteration: int
    mean_log_likelihood: float
    change: float
    seconds: float


IterationCallback = Callable[[IterationReport], None]


@dataclass
class EMResult:
    """Parameters after the last M-step and the lower-bound history (one value per iteration)."""

    params: MixtureParams
    lower_bounds: list[float] = field(default_factory=list)
    converged: bool = False

    @property
    def n_iter(self) -> int:
        return len(self.lower_bounds)

    @property
    def lower_bound(self) -> float:
        return self.lower_bounds[-1] if self.lower_bounds else -np.inf


def run_em(stats_pass: StatsPass, initial: MixtureParams, modalities: tuple[Modality, ...],
           reg_covar: float, tol: float, max_iter: int,
           on_iteration: IterationCallback | None = None) -> EMResult:
    """Iterate E and M steps from ``initial``, as scikit-learn's ``fit_predict`` does.

    Iteration i computes the mean log-likelihood of the current parameters (the lower bound)
    and the statistics in one pass, then the M-step. It stops when the lower bound changes by
    less than ``tol`` (never when ``tol`` is 0) or after ``max_iter`` iterations.
    """
    result = EMResult(initial)
    previous = -np.inf
    for iteration in range(1, max_iter + 1):
        started = time.perf_counter()
        stats = stats_pass(result.params)
        lower_bound = stats.mean_log_likelihood()
        result.params = stats.to_params(result.params, reg_covar, modalities)
        result.lower_bounds.append(lower_bound)
        change = lower_bound - previous
        previous = lower_bound
        if on_iteration is not None:
            on_iteration(IterationReport(iteration, lower_bound, change,
                                         time.perf_counter() - started))
        if abs(change) < tol:
            result.converged = True
            break
    return result


def best_of_restarts(initials: Callable[[int], MixtureParams], n_init: int,
                     run: Callable[[MixtureParams], EMResult]) -> EMResult:
    """Run EM from ``n_init`` initialisations; keep the highest final lower bound.

    Warns with :class:`ConvergenceWarning` when the best run did not converge.
    """
    best: EMResult | None = None
    for restart in range(n_init):
        result = run(initials(restart))
        if best is None or result.lower_bound > best.lower_bound:
            best = result
    assert best is not None
    if not best.converged and best.n_iter > 0:
        warnings.warn(
            f"EM did not converge in {best.n_iter} iterations (last change of the mean "
            "log-likelihood above tol). Increase max_iter or tol, or check for degenerate data.",
            ConvergenceWarning, stacklevel=3,
        )
    return best


def warn_collapsed_components(weights: np.ndarray, n_rows: int) -> list[int]:
    """Warn about and return the components holding less than one row's worth of mass."""
    collapsed = np.flatnonzero(weights * n_rows < 1.0).tolist()
    if collapsed:
        warnings.warn(
            f"Component(s) {collapsed} hold less than one row's worth of responsibility "
            f"(weights {np.round(weights[collapsed], 8).tolist()}): they have collapsed. "
            "Reduce n_components or increase reg_covar.",
            DegenerateComponentWarning, stacklevel=3,
        )
    return collapsed
