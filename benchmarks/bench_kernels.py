"""EM kernels against the machine's own GEMM peak, measured side by side in one process.

Printed, in this order: numpy's dgemm rate on a 3000 x 3000 x 3000 product (the peak, min of
``--repeats`` runs), then for each model the in-memory EM iteration (min and median of
``--iters`` iterations at tol=0) at N=``--rows`` (default 500,000), K=16, its flop count per
iteration, the rate that count implies and its fraction of the peak — per wall second and per
CPU second of the process (the latter holds when other processes share the cores), and the
wall seconds of ``score_samples`` over all N rows (best of two). Flop models (per
iteration, E-step + statistics; what the kernels multiply, whatever formulation they use):

=========== =====================  =============================================
full        4 N K d(d+1)/2         quadratic forms and second moments (packed)
diag        8 N K d                two (n, d) x (d, K) GEMMs each step
spherical   6 N K d                one GEMM (E-step) plus two (statistics)
=========== =====================  =============================================

Mixed models (``mixed``: 32 full + 16 diag + 8 spherical; ``wide``: README's 1B-entity
projection, 512 + 384 + 16 full, only with ``--models wide``: run it with ``--components 32``
and a few thousand rows) add
their modalities' counts.
With ``--dtypes float64,float32`` every model also runs with ``compute_dtype="float32"`` and
the ratio of the iterations and the relative gap of the final mean log-likelihoods are printed.
``--history-out FILE`` writes each run's lower-bound history (JSON), ``--compare FILE``
prints the largest relative gap against such a file (e.g. one written by another checkout).

Usage::

    python benchmarks/bench_kernels.py [--rows 500000] [--iters 5] [--models full,diag,...]
                                       [--dtypes float64,float32] [--threads N]
                                       [--components 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from bench_core import make_data
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.core.em import IterationReport

COMPONENTS = 16
"""K of every benchmarked model (``--components``)."""

MODELS: dict[str, list[tuple[str, int, str]]] = {
    "full": [("x", 64, "full")],
    "diag": [("x", 64, "diag")],
    "spherical": [("x", 64, "spherical")],
    "mixed": [("a", 32, "full"), ("b", 16, "diag"), ("c", 8, "spherical")],
    "wide": [("image", 512, "full"), ("text", 384, "full"), ("sensor", 16, "full")],
}
"""Benchmarked models: (name, width, covariance type) per modality."""

DEFAULT_MODELS = ("full", "diag", "spherical", "mixed")
"""``--models``'s default: ``wide`` only on request (at the default N it takes an hour)."""

FLOPS_PER_ROW_COMPONENT = {
    "full": lambda d: 4 * d * (d + 1) // 2,
    "tied": lambda d: 4 * d * (d + 1) // 2,
    "diag": lambda d: 8 * d,
    "spherical": lambda d: 6 * d,
}
"""Flops per row and component of one iteration, by covariance type (module docstring)."""


@dataclass
class Run:
    """One model fitted at one compute dtype: wall and CPU seconds per iteration (the CPU
    seconds of all the process's threads, from the second iteration on), lower bounds, and
    the wall seconds of ``score_samples`` on every row (best of two)."""

    seconds: list[float]
    cpu_seconds: list[float]
    lower_bounds: list[float]
    score_seconds: float


def iteration_flops(modalities: list[Modality], rows: int, components: int) -> float:
    """Flops of one EM iteration under the module's flop model."""
    return float(rows) * components * sum(
        FLOPS_PER_ROW_COMPONENT[m.covariance_type](m.dim) for m in modalities)


def dgemm_peak(repeats: int, size: int = 3000) -> tuple[float, float]:
    """numpy's C = A @ B on size x size float64 matrices: (GFLOP per wall second, GFLOP per
    CPU second of the process), each from the best of ``repeats`` runs."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    wall, cpu = np.inf, np.inf
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        a @ b
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return 2.0 * size ** 3 / wall / 1e9, 2.0 * size ** 3 / cpu / 1e9


def fit_model(data: dict[str, np.ndarray], modalities: list[Modality], iters: int,
              dtype: str, k: int = COMPONENTS) -> Run:
    """``iters`` EM iterations from the same random-from-data start (seed 0)."""
    seconds: list[float] = []
    cpu_marks: list[float] = []

    def record(report: IterationReport) -> None:
        seconds.append(report.seconds)
        cpu_marks.append(time.process_time())

    # kernel speed only: a few thousand rows of the wide model are far too few to fit it
    options = {"allow_small_data": True, **({} if dtype == "float64" else {"compute_dtype": dtype})}
    model = MultimodalGaussianMixture(modalities, k, tol=0.0, max_iter=iters,
                                      init_params="random_from_data", random_state=0,
                                      **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(data, on_iteration=record)
    return Run(seconds, list(np.diff(cpu_marks)), [float(v) for v in model.lower_bounds_],
               min(timed(lambda: model.score_samples(data)) for _ in range(2)))


def timed(call: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def model_data(name: str, rows: int,
               k: int = COMPONENTS) -> tuple[list[Modality], dict[str, np.ndarray]]:
    """A model's modalities and rows drawn from a random K-component mixture over all their
    features."""
    modalities = [Modality(n, d, kind) for n, d, kind in MODELS[name]]
    x = make_data(rows, sum(m.dim for m in modalities), k, seed=0)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    edges = np.cumsum([0, *(m.dim for m in modalities)])
    return modalities, {m.name: np.ascontiguousarray(x[:, edges[i]: edges[i + 1]])
                        for i, m in enumerate(modalities)}


def report(name: str, dtype: str, run: Run, flops: float, peak: tuple[float, float]) -> None:
    """One table row: wall seconds, rate and fraction of the wall peak, the same per CPU
    second (robust to other processes sharing the cores), and the final lower bound."""
    best, median = min(run.seconds), statistics.median(run.seconds)
    rate = flops / best / 1e9
    cpu_rate = flops / min(run.cpu_seconds, default=np.nan) / 1e9
    print(f"{name:10s}{dtype:>8s}{flops:10.2e}{best:8.3f}{median:8.3f}{rate:7.1f}"
          f"{rate / peak[0]:7.1%}{cpu_rate:7.1f}{cpu_rate / peak[1]:7.1%}"
          f"{run.lower_bounds[-1]:20.12f}{run.score_seconds:8.3f}", flush=True)


def compare_histories(runs: dict[str, Run], path: str) -> None:
    """Print the largest relative gap of each run's lower bounds against those in ``path``."""
    with open(path) as f:
        other = json.load(f)
    for key, run in runs.items():
        if key in other:
            gap = np.max(np.abs(np.subtract(run.lower_bounds, other[key]))
                         / np.abs(other[key]))
            print(f"{key}: max relative gap of the lower-bound history vs {path}: {gap:.2e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="dgemm peak runs (min)")
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--dtypes", default="float64", help="comma-separated compute dtypes")
    parser.add_argument("--threads", type=int, default=None, help="limit BLAS threads")
    parser.add_argument("--components", type=int, default=COMPONENTS, help="K")
    parser.add_argument("--history-out", default=None)
    parser.add_argument("--compare", default=None)
    args = parser.parse_args(argv)

    print(f"load average {os.getloadavg()} on {os.cpu_count()} CPUs; N={args.rows}, "
          f"K={args.components}, {args.iters} iterations, threads={args.threads or 'default'}")
    runs: dict[str, Run] = {}
    with threadpool_limits(args.threads):
        peak = dgemm_peak(args.repeats)
        print(f"dgemm peak (numpy 3000^3, best of {args.repeats}): {peak[0]:.1f} GFLOP/s, "
              f"{peak[1]:.1f} GFLOP per CPU-second")
        print(f"{'model':10s}{'dtype':>8s}{'flops/it':>10s}{'min s':>8s}{'med s':>8s}"
              f"{'GF/s':>7s}{'peak':>7s}{'GF/cpu':>7s}{'peak':>7s}{'final mean log-lik':>20s}"
              f"{'score s':>8s}")
        for name in args.models.split(","):
            modalities, data = model_data(name, args.rows, args.components)
            flops = iteration_flops(modalities, args.rows, args.components)
            for dtype in args.dtypes.split(","):
                runs[f"{name}/{dtype}"] = run = fit_model(data, modalities, args.iters, dtype,
                                                          args.components)
                report(name, dtype, run, flops, peak)
            summarise_dtypes(name, runs)
    if args.compare:
        compare_histories(runs, args.compare)
    if args.history_out:
        with open(args.history_out, "w") as f:
            json.dump({key: run.lower_bounds for key, run in runs.items()}, f)
    return 0


def summarise_dtypes(name: str, runs: dict[str, Run]) -> None:
    """float64 / float32 iteration ratio and the final log-likelihoods' relative gap."""
    double, single = runs.get(f"{name}/float64"), runs.get(f"{name}/float32")
    if double is None or single is None:
        return
    gap = abs(single.lower_bounds[-1] - double.lower_bounds[-1]) / abs(double.lower_bounds[-1])
    print(f"{name}: float32 iteration {min(double.seconds) / min(single.seconds):.2f}x faster "
          f"(min wall s), {min(double.cpu_seconds) / min(single.cpu_seconds):.2f}x (min CPU s); "
          f"final mean log-likelihood relative gap {gap:.1e}")


if __name__ == "__main__":
    sys.exit(main())
