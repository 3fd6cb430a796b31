"""The benchmark's reference detectors are what the report says they are."""

from __future__ import annotations

import numpy as np
from scipy.stats import multivariate_normal
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

from mmgmm_spark.app.benchmark_adbench import criteria, ranking_metrics
from mmgmm_spark.app.references import IFOREST_SEEDS, reference_result


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(3)
    x = rng.randn(300, 4) @ rng.randn(4, 4) * [1.0, 5.0, 0.1, 20.0] + [3.0, -1.0, 0.0, 50.0]
    x[:15] += rng.randn(15, 4) * 4 * x.std(axis=0)
    y = np.zeros(300, dtype=int)
    y[:15] = 1
    return x, y


def test_iforest_is_the_mean_over_five_default_seeds() -> None:
    x, y = _data()
    fit_rows = np.arange(0, 300, 2)
    expected = [roc_auc_score(y, -IsolationForest(random_state=s).fit(x[fit_rows])
                              .score_samples(x)) for s in range(5)]
    result = reference_result("iforest", x, y, fit_rows, ranking_metrics)
    assert IFOREST_SEEDS == (0, 1, 2, 3, 4) and result["seeds"] == 5
    np.testing.assert_allclose(result["auroc"], np.mean(expected), rtol=1e-12)


def test_gaussian_is_one_standardised_gaussian() -> None:
    x, y = _data()
    fit_rows = np.arange(300)
    mean, std = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / std
    cov = np.cov(z, rowvar=False, bias=True) + 1e-6 * np.eye(4)
    score = -multivariate_normal(z.mean(axis=0), cov).logpdf(z)
    result = reference_result("gaussian", x, y, fit_rows, ranking_metrics)
    np.testing.assert_allclose(result["auroc"], roc_auc_score(y, score), rtol=1e-10)
    np.testing.assert_allclose(result["average_precision"],
                               average_precision_score(y, score), rtol=1e-10)


def test_ledoit_wolf_reference_uses_the_closed_form_shrinkage() -> None:
    x, y = _data()
    c = x - x.mean(axis=0)
    n, d = c.shape
    s = c.T @ c / n
    mu = np.trace(s) / d
    beta = sum(np.linalg.norm(np.outer(r, r) - s) ** 2 for r in c) / n ** 2
    delta = np.linalg.norm(s - mu * np.eye(d)) ** 2
    shrunk = (1 - min(beta, delta) / delta) * s + min(beta, delta) / delta * mu * np.eye(d)
    score = np.einsum("ij,jk,ik->i", c, np.linalg.inv(shrunk), c)
    result = reference_result("ledoit_wolf", x, y, np.arange(n), ranking_metrics)
    np.testing.assert_allclose(result["auroc"], roc_auc_score(y, score), rtol=1e-10)


def test_criteria_compare_against_the_references() -> None:
    def entry(joint: float, iforest: float, gaussian: float) -> dict:
        return {"results": {"joint": {"auroc": joint}, "iforest": {"auroc": iforest},
                            "gaussian": {"auroc": gaussian}}}

    goals = criteria({"g/a": entry(0.95, 0.90, 0.80), "g/b": entry(0.85, 0.80, 0.91)})["g"]
    np.testing.assert_allclose(goals["mean_minus_iforest"], 0.05)
    np.testing.assert_allclose(goals["worst_gap"], -0.06)
    assert goals["worst_set"] == "g/b" and not goals["passed"]
