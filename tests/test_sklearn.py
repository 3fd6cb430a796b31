"""The scikit-learn estimators: estimator checks, clone / Pipeline / GridSearchCV, and numbers
against scikit-learn's GaussianMixture and scipy."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from mmgmm_spark import DataValidationError
from mmgmm_spark.sklearn import (
    MultimodalAnomalyDetector,
    MultimodalGaussianMixture,
    weighted_quantile,
)

README = Path(__file__).resolve().parents[1] / "README.md"


def seeding_differs(estimator) -> dict[str, str]:
    """With K > 1, k-means seeding draws differently from weighted rows than from repeated
    ones (as scikit-learn's own KMeans); the fits then agree only given the same initial
    parameters, which test_integer_sample_weights_equal_repeated_rows checks."""
    if estimator.n_components == 1:
        return {}
    return {"check_sample_weight_equivalence_on_dense_data":
            "k-means seeding draws differ between weighted and repeated rows"}


@parametrize_with_checks([MultimodalGaussianMixture(), MultimodalAnomalyDetector(),
                          MultimodalGaussianMixture(2, covariance_type="diag"),
                          MultimodalAnomalyDetector(2, covariance_type="spherical")],
                         expected_failed_checks=seeding_differs)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.fixture(scope="module")
def blobs():
    """300 rows of three separated 2-d groups with different spreads."""
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [6.0, 1.0], [1.0, 7.0]])
    group = rng.integers(3, size=300)
    return centres[group] + rng.normal(size=(300, 2)) * np.array([0.5, 1.0, 1.5])[group, None]


def same_init(X: np.ndarray, k: int) -> dict:
    """Initial weights, means and full precisions from a k-means partition (GaussianMixture's
    argument shapes), given to both libraries."""
    labels = KMeans(k, n_init=1, random_state=0).fit_predict(X)
    covariances = [np.cov(X[labels == j].T, bias=True) + 1e-6 * np.eye(X.shape[1])
                   for j in range(k)]
    return {"weights_init": np.bincount(labels, minlength=k) / len(X),
            "means_init": np.array([X[labels == j].mean(axis=0) for j in range(k)]),
            "precisions_init": np.linalg.inv(np.array(covariances))}


def grid(X: np.ndarray) -> list[dict]:
    return [{"n_components": [k], **{name: [value] for name, value in same_init(X, k).items()}}
            for k in range(1, 6)]


def test_grid_search_over_n_components_chooses_what_gaussian_mixture_chooses(blobs):
    folds = KFold(5, shuffle=True, random_state=0)
    ours = GridSearchCV(MultimodalGaussianMixture(), grid(blobs), cv=folds).fit(blobs)
    theirs = GridSearchCV(GaussianMixture(), grid(blobs), cv=folds).fit(blobs)
    assert ours.best_params_["n_components"] == theirs.best_params_["n_components"]
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"],
                               theirs.cv_results_["mean_test_score"], rtol=1e-6)
    assert ours.best_estimator_.score(blobs) == pytest.approx(
        theirs.best_estimator_.score(blobs), rel=1e-6)


@pytest.mark.parametrize("kind", ["full", "tied", "diag", "spherical"])
def test_one_modality_equals_gaussian_mixture(blobs, kind):
    start = same_init(blobs, 3)
    start["precisions_init"] = GaussianMixture(3, covariance_type=kind, max_iter=1,
                                               random_state=0).fit(blobs).precisions_
    ours = MultimodalGaussianMixture(3, covariance_type=kind, tol=0, max_iter=20, **start)
    theirs = GaussianMixture(3, covariance_type=kind, tol=0, max_iter=20, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours.fit(blobs)
        theirs.fit(blobs)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-6,
                                   atol=1e-9)
    np.testing.assert_allclose(ours.score_samples(blobs), theirs.score_samples(blobs),
                               rtol=1e-6)
    np.testing.assert_allclose(ours.predict_proba(blobs), theirs.predict_proba(blobs),
                               atol=1e-6)
    assert ours.bic(blobs) == pytest.approx(theirs.bic(blobs), rel=1e-6)
    assert ours.aic(blobs) == pytest.approx(theirs.aic(blobs), rel=1e-6)
    X, labels = ours.sample(50)
    assert X.shape == (50, 2) and labels.shape == (50,)


def test_clone_and_pipeline(blobs):
    model = MultimodalGaussianMixture(3, covariance_type="diag", random_state=0)
    twin = clone(model)
    assert twin.get_params() == model.get_params() and not hasattr(twin, "model_")
    pipeline = make_pipeline(StandardScaler(), model).fit(blobs)
    scaled = StandardScaler().fit_transform(blobs)
    direct = clone(model).fit(scaled)
    np.testing.assert_allclose(pipeline.score_samples(blobs), direct.score_samples(scaled),
                               rtol=1e-12)
    assert pipeline.score(blobs) == pytest.approx(direct.score(scaled), rel=1e-12)


@pytest.fixture(scope="module")
def two_views(blobs):
    """Columns 0-1: the blobs; 2-4: a second view of the same groups; 20% miss the second."""
    rng = np.random.default_rng(1)
    second = np.hstack([blobs @ np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0]]),
                        ]) + rng.normal(size=(300, 3))
    second[rng.random(300) < 0.2] = np.nan
    return np.hstack([blobs, second])


GROUPS = [("a", [0, 1], "full"), ("b", [2, 3, 4], "diag")]


def test_column_groups_with_nan_are_missing_modalities(two_views):
    """A row whose group is NaN scores the mixture marginal of its other group (scipy)."""
    model = MultimodalGaussianMixture(3, modalities=GROUPS, random_state=0).fit(two_views)
    assert set(model.means_) == {"a", "b"} and model.covariances_["b"].shape == (3, 3)
    missing = np.isnan(two_views[:, 2])
    x = two_views[missing][:, :2]
    reference = logsumexp([np.log(model.weights_[k]) + multivariate_normal(
        model.means_["a"][k], model.covariances_["a"][k]).logpdf(x) for k in range(3)], axis=0)
    np.testing.assert_allclose(model.score_samples(two_views)[missing], reference, rtol=1e-10)
    partly = two_views.copy()
    partly[0, 2] = np.nan
    partly[0, 3] = 1.0
    with pytest.raises(DataValidationError, match="modality 'b' has 1 row"):
        model.score_samples(partly)
    with pytest.raises(ValueError, match=r"columns \[4\] are in no group"):
        MultimodalGaussianMixture(modalities=[("a", [0, 1]), ("b", [2, 3])]).fit(two_views)


def test_detector_offset_is_the_contamination_quantile(two_views):
    detector = MultimodalAnomalyDetector(3, contamination=0.05, modalities=GROUPS,
                                         random_state=0)
    labels = detector.fit_predict(two_views)
    scores = detector.score_samples(two_views)
    assert detector.offset_ == pytest.approx(np.quantile(scores, 0.05), rel=1e-12)
    assert np.count_nonzero(labels == -1) == 15
    np.testing.assert_array_equal(labels, np.where(scores >= detector.offset_, 1, -1))
    with pytest.raises(ValueError, match=r"contamination must be a number in \(0, 0.5\]"):
        MultimodalAnomalyDetector(contamination=0.7).fit(two_views[:, :2])


def test_integer_sample_weights_equal_repeated_rows(two_views):
    """Same initial parameters: the weighted fit and the fit of repeated rows agree, threshold
    included."""
    weights = np.random.default_rng(2).integers(0, 4, size=300)
    model = MultimodalGaussianMixture(3, modalities=GROUPS, max_iter=1, random_state=0)
    model.fit(two_views)
    start = {"weights_init": model.weights_, "means_init": model.means_,
             "precisions_init": model.precisions_}
    fitted = []
    for X, w in ((two_views, weights), (np.repeat(two_views, weights, axis=0), None)):
        detector = MultimodalAnomalyDetector(3, modalities=GROUPS, tol=0, max_iter=10, **start)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitted.append(detector.fit(X, sample_weight=w))
    weighted, repeated = fitted
    np.testing.assert_allclose(weighted.lower_bounds_, repeated.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(weighted.means_["a"], repeated.means_["a"], rtol=1e-9)
    assert weighted.offset_ == pytest.approx(repeated.offset_, rel=1e-9)


@pytest.mark.parametrize("q", [0.0, 0.05, 0.1, 0.37, 0.5, 1.0])
def test_weighted_quantile_equals_numpy_on_repeated_values(q):
    rng = np.random.default_rng(4)
    values, weights = rng.normal(size=40), rng.integers(0, 5, size=40)
    assert weighted_quantile(values, q, weights.astype(float)) == pytest.approx(
        np.quantile(np.repeat(values, weights), q), rel=1e-12)


def test_warm_start_continues_from_the_previous_fit(blobs):
    model = MultimodalGaussianMixture(3, max_iter=3, tol=0, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(blobs)
        first = list(model.lower_bounds_)
        model.fit(blobs)
        once = MultimodalGaussianMixture(3, max_iter=6, tol=0, random_state=0).fit(blobs)
    np.testing.assert_allclose(first + model.lower_bounds_, once.lower_bounds_, rtol=1e-10)


def readme_block(title: str) -> str:
    """The first ```python block after the README heading ``title``."""
    text = README.read_text()
    section = text[text.index(f"\n### {title}\n"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.parametrize("title", ["scikit-learn", "Sample weights and warm starts"])
def test_readme_examples_run(title):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(readme_block(title), f"README:{title}", "exec"), {})
