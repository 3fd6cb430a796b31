"""The EM loop and its one driver, independent of where the data lives.

A *statistics pass* is any function ``params -> SufficientStats`` over all rows: a loop over
in-memory chunks, or a Spark job that maps partitions and reduces with ``treeAggregate``.
:func:`fit_em` is the only driver: in-memory, Spark, checkpointed and resumed fits all call it
with some :class:`TrainingData` (:class:`InMemoryRows`, or the Spark layer's cached blocks).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import (
    DegenerateComponentWarning,
    MixtureParams,
    RegCovar,
    block_reg_covar,
    check_initial_params,
)
from mmgmm_spark.core.spec import MixtureSpec
from mmgmm_spark.core.training import StatsPass, TrainingData


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
    """Parameters after the last M-step and the lower-bound history (one value per iteration);
    ``reg_covar``: {modality: value added to its covariances} of the fit (set by
    :func:`fit_em`)."""

    params: MixtureParams
    lower_bounds: list[float] = field(default_factory=list)
    converged: bool = False
    reg_covar: dict[str, float | np.ndarray] | None = None

    @property
    def n_iter(self) -> int:
        return len(self.lower_bounds)

    @property
    def lower_bound(self) -> float:
        return self.lower_bounds[-1] if self.lower_bounds else -np.inf


ResultCallback = Callable[[EMResult], None]
"""Called after every completed iteration with the run so far (e.g. to write a checkpoint)."""


def run_em(stats_pass: StatsPass, initial: MixtureParams, modalities: tuple[Modality, ...],
           reg_covar: RegCovar, tol: float, max_iter: int,
           on_iteration: IterationCallback | None = None, *,
           history: Sequence[float] = (),
           on_result: ResultCallback | None = None) -> EMResult:
    """Iterate E and M steps from ``initial``, as scikit-learn's ``fit_predict`` does.

    Iteration i computes the mean log-likelihood of the current parameters (the lower bound)
    and the statistics in one pass, then the M-step. It stops when the lower bound changes by
    less than ``tol`` (never when ``tol`` is 0) or after ``max_iter`` iterations.

    To resume an interrupted run, pass the parameters after its last completed iteration as
    ``initial`` and its lower bounds as ``history``: iterations continue from
    ``len(history) + 1`` (none when the history already converged or reached ``max_iter``),
    so the result equals the uninterrupted run's. ``on_result`` is called after
    ``on_iteration`` with the result so far (parameters after the M-step).
    """
    result = EMResult(initial, [float(v) for v in history])
    previous = result.lower_bounds[-1] if history else -np.inf
    if len(history) >= 2 and abs(history[-1] - history[-2]) < tol:
        result.converged = True
        return result
    for iteration in range(len(result.lower_bounds) + 1, max_iter + 1):
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
        if on_result is not None:
            on_result(result)
        if result.converged:
            break
    return result


@dataclass
class EMProgress:
    """Where a best-of-restarts EM stands after a completed iteration: enough to resume it.

    Attributes:
        restart: index of the restart in progress (0-based).
        current: that restart's parameters and lower bounds so far.
        best: the best finished earlier restart, or None.
        rng: the initialisation generator (its state is part of what resumes), or None.
    """

    restart: int
    current: EMResult
    best: EMResult | None = None
    rng: np.random.RandomState | None = None


ProgressCallback = Callable[[EMProgress], None]


class ResumePoint(Protocol):
    """A saved :class:`EMProgress` (e.g. a checkpoint) and the generator state that goes with it."""

    progress: EMProgress
    rng_state: tuple | None


def best_of_restarts(initials: Callable[[int], MixtureParams], n_init: int,
                     run: Callable[[EMResult, ResultCallback], EMResult], *,
                     resume: EMProgress | None = None,
                     on_progress: ProgressCallback | None = None,
                     rng: np.random.RandomState | None = None) -> EMResult:
    """Run EM from ``n_init`` initialisations; keep the highest final lower bound.

    ``run(start, on_result)`` continues EM from ``start`` (parameters and lower bounds so far,
    see :func:`run_em`'s ``history``) and calls ``on_result`` after each iteration;
    ``on_progress`` receives an :class:`EMProgress` after each iteration. With ``resume`` the
    restarts before ``resume.restart`` are not run again and ``initials`` is not called for
    the resumed restart, so the result equals the uninterrupted run's. Warns with
    :class:`ConvergenceWarning` when the best run did not converge.
    """
    best = resume.best if resume is not None else None
    first = resume.restart if resume is not None else 0
    for restart in range(first, n_init):
        start = (resume.current if resume is not None and restart == first
                 else EMResult(initials(restart)))

        def report(current: EMResult, restart: int = restart,
                   best: EMResult | None = best) -> None:
            if on_progress is not None:
                on_progress(EMProgress(restart, current, best, rng))

        result = run(start, report)
        if best is None or result.lower_bound > best.lower_bound:
            best = result
    assert best is not None
    if not best.converged and best.n_iter > 0:
        warnings.warn(
            f"EM did not converge in {best.n_iter} iterations (last change of the mean "
            "log-likelihood above tol). Increase max_iter or tol, or check for degenerate data.",
            ConvergenceWarning, stacklevel=4,
        )
    return best


# ------------------------------------------------------------------- the one driver
def fit_em(spec: MixtureSpec, data: TrainingData, *,
           on_iteration: IterationCallback | None = None,
           on_progress: ProgressCallback | None = None, resume: ResumePoint | None = None,
           init_sample_rows: int = 100_000, tree_depth: int = 2,
           initial: MixtureParams | None = None) -> EMResult:
    """Fit ``spec`` on ``data`` by EM with ``spec.n_init`` restarts: every fit runs this.

    In memory, on Spark, checkpointed (``on_progress`` writes each :class:`EMProgress`) or
    resumed (``resume``: the restart, history and generator state to continue from, so the
    result equals the uninterrupted fit's). Initialisation uses ``data.init_sample`` of at
    most ``init_sample_rows`` rows; ``tree_depth`` is the depth of a distributed reduction.
    A warm start (``initial``: parameters of the same modalities, widths, covariance types
    and K) runs one EM from exactly those parameters: no initialisation, no restarts.
    """
    if data.n_rows < spec.n_components:
        raise DataValidationError(
            f"{data.source}: {data.n_rows} rows, fewer than n_components="
            f"{spec.n_components}. Lower n_components or add rows.")
    spec.check_enough_rows(data.n_rows, data.source)
    rng = spec.rng()
    sample = data.init_sample(init_sample_rows, spec.random_state
                              if isinstance(spec.random_state, int) else 0)
    if initial is not None:
        check_initial_params(initial, spec.modalities, spec.n_components)
        initials, n_init = (lambda _: initial), 1
    else:
        initials, n_init = (lambda _: spec.initial_params(sample, rng)), spec.n_init
    if resume is not None and resume.rng_state is not None:
        rng.set_state(resume.rng_state)
    stats_pass = data.stats_pass(spec.modalities, spec.n_components, tree_depth,
                                 spec.compute_dtype)
    reg_covar = spec.block_reg_covar(sample)

    def run(start: EMResult, on_result: ResultCallback) -> EMResult:
        return run_em(stats_pass, start.params, spec.modalities, reg_covar, spec.tol,
                      spec.max_iter, on_iteration, history=start.lower_bounds,
                      on_result=on_result)

    best = best_of_restarts(initials, n_init, run,
                            resume=None if resume is None else resume.progress,
                            on_progress=on_progress, rng=rng)
    best.reg_covar = reg_covar
    return best


HELD_UP = 2.0
"""A component covariance is near-singular when its smallest eigenvalue is at most this many
times ``reg_covar``: in some direction only the regularisation holds it up."""


def _few_rows_needed(modality: Modality) -> int:
    """Rows a component needs for a non-singular covariance of ``modality`` by itself."""
    return {"full": modality.dim + 1, "tied": 1}.get(modality.covariance_type, 2)


def _degenerate_blocks(params: MixtureParams, modality: Modality, rows: np.ndarray,
                       reg_covar: float | np.ndarray) -> list[str]:
    """Descriptions of the components of ``modality``'s block that sit on too few rows or
    have a near-singular covariance (``reg_covar``: a number or (d,) per feature, whose
    smallest value bounds the smallest eigenvalue)."""
    reg_covar = float(np.min(reg_covar))
    problems = []
    few = np.flatnonzero((rows >= 1.0) & (rows < _few_rows_needed(modality)))
    if few.size:
        problems.append(f"component(s) {few.tolist()} of modality '{modality.name}' (dim "
                        f"{modality.dim}, {modality.covariance_type}) hold "
                        f"{np.round(rows[few], 1).tolist()} rows, fewer than the "
                        f"{_few_rows_needed(modality)} a non-singular covariance needs")
    dense = params.blocks[modality.name].full_covariances(params.n_components)
    smallest = np.linalg.eigvalsh(dense)[:, 0]
    bad = np.flatnonzero((smallest <= HELD_UP * reg_covar) & (rows >= 1.0))
    if bad.size:
        problems.append(f"component(s) {bad.tolist()} of modality '{modality.name}' have a "
                        f"near-singular covariance (smallest variance "
                        f"{[f'{v:.1e}' for v in smallest[bad]]}, reg_covar {reg_covar:g})")
    return problems


def warn_collapsed_components(params: MixtureParams, modalities: Sequence[Modality],
                              n_rows: int, reg_covar: RegCovar) -> list[int]:
    """Warn about and return the components holding less than one row's worth of mass;
    also warn, naming the modality and the component, about components on fewer rows than
    their covariance needs or with a near-singular covariance."""
    rows = params.weights * n_rows
    collapsed = np.flatnonzero(rows < 1.0).tolist()
    if collapsed:
        warnings.warn(
            f"Component(s) {collapsed} hold less than one row's worth of responsibility "
            f"(weights {np.round(params.weights[collapsed], 8).tolist()}): they have collapsed. "
            "Reduce n_components or increase reg_covar.",
            DegenerateComponentWarning, stacklevel=3,
        )
    problems = [p for m in modalities
                for p in _degenerate_blocks(params, m, rows, block_reg_covar(reg_covar, m.name))]
    if problems:
        warnings.warn(
            "Degenerate components: " + "; ".join(problems) + ". Their densities are held up "
            "by reg_covar only and can dominate the scores: reduce n_components, raise "
            "reg_covar, or use diag covariances for these modalities.",
            DegenerateComponentWarning, stacklevel=3,
        )
    return collapsed
