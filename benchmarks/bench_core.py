"""EM iteration speed of the numpy core against scikit-learn's GaussianMixture, side by side.

Both start from identical parameters (weights, means, precisions) and run ``--iters`` EM
iterations with ``tol=0`` on the same in-memory data (default 200,000 x 16, K=8, full
covariance). Reported: the median seconds per iteration of each, their ratio, and both final
mean log-likelihoods, which must agree (the script exits with status 1 if they do not).

scikit-learn is timed by driving exactly the loop of ``GaussianMixture.fit_predict`` (its
``_e_step`` then ``_m_step``) one iteration at a time, so its initialisation (k-means on all
rows) is not counted; ours is timed by the ``on_iteration`` callback of ``fit``.

Usage::

    python benchmarks/bench_core.py [--rows 200000] [--dim 16] [--components 8] [--iters 20]
                                    [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np
from sklearn.cluster import kmeans_plusplus
from sklearn.mixture import GaussianMixture
from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky
from threadpoolctl import threadpool_limits

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.core.em import IterationReport


def make_data(rows: int, dim: int, components: int, seed: int) -> np.ndarray:
    """Rows drawn from a random mixture of ``components`` full-covariance Gaussians."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(components, dim))
    labels = rng.integers(components, size=rows)
    x = np.empty((rows, dim))
    for k in range(components):
        a = rng.normal(size=(dim, dim)) / np.sqrt(dim)
        chol = np.linalg.cholesky(a @ a.T + 0.5 * np.eye(dim))
        rows_k = labels == k
        x[rows_k] = means[k] + rng.standard_normal((int(rows_k.sum()), dim)) @ chol.T
    return x


def initial_parameters(x: np.ndarray, components: int, seed: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uniform weights, k-means++ seeds on a sample as means, the sample covariance everywhere."""
    sample = x[np.random.default_rng(seed).choice(len(x), size=min(len(x), 20_000),
                                                  replace=False)]
    means, _ = kmeans_plusplus(sample, components, random_state=seed)
    precision = np.linalg.inv(np.cov(sample, rowvar=False))
    return (np.full(components, 1.0 / components), means,
            np.repeat(precision[None], components, axis=0))


def bench_ours(x: np.ndarray, start: tuple, iters: int, reg_covar: float
               ) -> tuple[list[float], list[float]]:
    weights, means, precisions = start
    seconds: list[float] = []

    def record(report: IterationReport) -> None:
        seconds.append(report.seconds)

    model = MultimodalGaussianMixture(
        [Modality("x", x.shape[1], "full")], len(weights), tol=0.0, max_iter=iters,
        reg_covar=reg_covar, init_params="random_from_data", weights_init=weights,
        means_init={"x": means}, precisions_init={"x": precisions}, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit({"x": x}, on_iteration=record)
    return seconds, list(model.lower_bounds_)


def bench_sklearn(x: np.ndarray, start: tuple, iters: int, reg_covar: float
                  ) -> tuple[list[float], list[float]]:
    weights, means, precisions = start
    gm = GaussianMixture(len(weights), covariance_type="full", tol=0.0, max_iter=iters,
                         reg_covar=reg_covar)
    covariances = np.linalg.inv(precisions)
    gm.weights_, gm.means_, gm.covariances_ = weights.copy(), means.copy(), covariances
    gm.precisions_cholesky_ = _compute_precision_cholesky(covariances, "full")
    seconds, bounds = [], []
    for _ in range(iters):                      # the body of GaussianMixture.fit_predict
        started = time.perf_counter()
        log_prob_norm, log_resp = gm._e_step(x)
        gm._m_step(x, log_resp)
        seconds.append(time.perf_counter() - started)
        bounds.append(float(log_prob_norm))
    return seconds, bounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--components", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--reg-covar", type=float, default=1e-6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="limit BLAS/OpenMP threads (default: library default)")
    args = parser.parse_args(argv)

    x = make_data(args.rows, args.dim, args.components, args.seed)
    start = initial_parameters(x, args.components, args.seed)
    print(f"data {args.rows} x {args.dim}, K={args.components}, full covariance, tol=0, "
          f"{args.iters} iterations, threads={args.threads or 'default'}")
    with threadpool_limits(args.threads):
        ours_s, ours_lb = bench_ours(x, start, args.iters, args.reg_covar)
        sk_s, sk_lb = bench_sklearn(x, start, args.iters, args.reg_covar)

    ours_med, sk_med = statistics.median(ours_s), statistics.median(sk_s)
    print(f"{'':14s}{'s/iter (median)':>16s}{'s/iter (min)':>14s}{'total s':>10s}"
          f"{'final mean log-lik':>22s}")
    for name, secs, bounds in (("mmgmm-spark", ours_s, ours_lb), ("scikit-learn", sk_s, sk_lb)):
        print(f"{name:14s}{statistics.median(secs):16.4f}{min(secs):14.4f}{sum(secs):10.2f}"
              f"{bounds[-1]:22.12f}")
    print(f"speed-up (sklearn / mmgmm-spark, medians): {sk_med / ours_med:.2f}x")
    gap = float(np.max(np.abs(np.subtract(ours_lb, sk_lb)) / np.abs(sk_lb)))
    print(f"max relative difference of the lower-bound histories: {gap:.2e}")
    if gap > 1e-6:
        print("ERROR: the two implementations disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
