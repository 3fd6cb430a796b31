"""Reference detectors the accuracy benchmark reports next to the model, in the same run.

Each is a plain scikit-learn detector fitted on the same rows as the model (the benchmark's
``fit_rows``) and scoring every row, higher = more anomalous; a multi-view set is given to
them as its concatenated views (early fusion):

- ``iforest``: ``sklearn.ensemble.IsolationForest`` with default settings, one fit per seed
  in :data:`IFOREST_SEEDS`; its AUROC / average precision are the means over the seeds;
- ``gaussian``: one standardised Gaussian (``StandardScaler`` then
  ``GaussianMixture(1, "full", reg_covar=1e-6)``), the negative log-likelihood;
- ``ledoit_wolf``: squared Mahalanobis distance under ``LedoitWolf`` (raw features);
- ``pyod_gmm``: PyOD's default GMM detector, ``GaussianMixture(1, "full")`` on raw features;
- ``knn`` (not in the benchmark's default list): mean distance to the 5 nearest other rows,
  standardised.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

IFOREST_SEEDS = (0, 1, 2, 3, 4)
Detector = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
"""(x_fit (n_fit, d), x (n, d), seed) -> (n,) anomaly scores of x."""


def iforest_score(x_fit: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """(n,) negative ``score_samples`` of a default IsolationForest fitted on x_fit."""
    from sklearn.ensemble import IsolationForest

    return -IsolationForest(random_state=seed).fit(x_fit).score_samples(x)


def gaussian_score(x_fit: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """(n,) negative log-likelihood under one full Gaussian of the standardised features."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    return pyod_gmm_score(scaler.transform(x_fit), scaler.transform(x), seed)


def pyod_gmm_score(x_fit: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """(n,) negative log-likelihood under ``GaussianMixture(1, "full")`` (raw features)."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(1, covariance_type="full", random_state=seed).fit(x_fit)
    return -gmm.score_samples(x)


def ledoit_wolf_score(x_fit: np.ndarray, x: np.ndarray, seed: int) -> np.ndarray:
    """(n,) squared Mahalanobis distance under a Ledoit-Wolf covariance of x_fit."""
    from sklearn.covariance import LedoitWolf

    return LedoitWolf().fit(x_fit).mahalanobis(x)


def knn_score(x_fit: np.ndarray, x: np.ndarray, seed: int, k: int = 5) -> np.ndarray:
    """(n,) mean distance of each row of x to its k nearest other rows of x_fit,
    standardised (a row of x_fit is not its own neighbour)."""
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_fit)
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(scaler.transform(x_fit)).kneighbors(
        scaler.transform(x))
    return distances[:, 1:].mean(axis=1)


DETECTORS: dict[str, Detector] = {
    "iforest": iforest_score, "gaussian": gaussian_score, "ledoit_wolf": ledoit_wolf_score,
    "pyod_gmm": pyod_gmm_score, "knn": knn_score}
SEEDS: dict[str, tuple[int, ...]] = {"iforest": IFOREST_SEEDS}
"""Seeds per detector (the others are deterministic: seed 0)."""
REFERENCES = ("iforest", "gaussian", "ledoit_wolf", "pyod_gmm")
"""The detectors :mod:`mmgmm_spark.app.benchmark_adbench` runs by default."""


def reference_result(name: str, x: np.ndarray, y: np.ndarray, fit_rows: np.ndarray,
                     metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]]
                     ) -> dict[str, float | int | str | None]:
    """Mean AUROC and average precision of detector ``name`` over its seeds.

    Args:
        name: a key of :data:`DETECTORS`.
        x: (n, d) every row; the detector is fitted on ``x[fit_rows]``.
        y: (n,) labels, only for the metrics.
        fit_rows: (n_fit,) row indices to fit on.
        metrics: (labels, scores) -> {"auroc", "average_precision"}.
    """
    seeds = SEEDS.get(name, (0,))
    try:
        runs = [metrics(y, DETECTORS[name](x[fit_rows], x, seed)) for seed in seeds]
    except (ValueError, np.linalg.LinAlgError) as error:     # e.g. singular covariance
        return {"auroc": None, "average_precision": None, "error": str(error)[:120]}
    return {key: float(np.mean([r[key] for r in runs])) for key in runs[0]} | {
        "seeds": len(seeds)}
