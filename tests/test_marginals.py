"""Normal scores (Gaussian copula) against scipy's ranks and normal quantile function."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm, rankdata

from mmgmm_spark.core.marginals import NormalScores
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.preprocessing import ModalityPreprocessor
from mmgmm_spark.models.fusion import FusionConfig, FusionModel


@pytest.fixture()
def mixed() -> np.ndarray:
    """(400, 3): skewed, discrete (many ties) and heavy-tailed features."""
    rng = np.random.RandomState(0)
    return np.c_[rng.exponential(size=400), rng.randint(0, 4, 400).astype(float),
                 rng.standard_t(2, size=400)]


def test_training_rows_get_the_normal_quantile_of_their_mid_rank(mixed: np.ndarray) -> None:
    n = len(mixed)
    expected = norm.ppf((np.apply_along_axis(rankdata, 0, mixed) - 0.5) / n)
    np.testing.assert_allclose(NormalScores.fit(mixed, 1000).transform(mixed), expected,
                               atol=1e-10)


def test_sketch_of_fewer_quantiles_is_close_and_tails_keep_growing(mixed: np.ndarray) -> None:
    n = len(mixed)
    scores = NormalScores.fit(mixed[:, [0, 2]], 50)
    expected = norm.ppf((np.apply_along_axis(rankdata, 0, mixed[:, [0, 2]]) - 0.5) / n)
    inner = np.abs(expected) < 2
    assert np.abs(scores.transform(mixed[:, [0, 2]])[inner] - expected[inner]).max() < 0.1
    far = np.array([[mixed[:, 0].max() + 1, 0.0], [mixed[:, 0].max() + 5, 0.0]])
    top = scores.transform(far)[:, 0]
    assert top[1] > top[0] > norm.ppf(1 - 0.5 / 50)


def test_missing_rows_stay_missing_and_bad_quantiles_are_refused(mixed: np.ndarray) -> None:
    x = mixed.copy()
    x[[5, 9]] = np.nan
    out = NormalScores.fit(x).transform(x)
    assert np.isnan(out[[5, 9]]).all() and not np.isnan(np.delete(out, [5, 9], 0)).any()
    with pytest.raises(ValueError, match="non-decreasing"):
        NormalScores.from_quantiles(np.array([[1.0], [0.0]]), np.ones(1))


def test_preprocessor_option_round_trips_and_feeds_the_model(mixed: np.ndarray) -> None:
    pre = ModalityPreprocessor.fit(mixed, None, normal_scores=True)
    arrays, meta = pre.to_arrays("p0_")
    loaded = ModalityPreprocessor.from_arrays(arrays, meta, "p0_")
    expected = norm.ppf((np.apply_along_axis(rankdata, 0, mixed) - 0.5) / len(mixed))
    expected = (expected - expected.mean(axis=0)) / expected.std(axis=0)
    np.testing.assert_allclose(loaded.transform(mixed), expected, atol=1e-9)
    model = FusionModel([Modality("x", 3)], FusionConfig(n_components=(1,), projection=None,
                                                          normal_scores=True)).fit({"x": mixed})
    # one Gaussian of the standardised normal scores; the density is of the scores (the
    # standardisation's Jacobian is included, the empirical CDF's is not)
    z = loaded.transform(mixed)
    cov = np.cov(z, rowvar=False, bias=True) + 1e-3 * np.eye(3)
    np.testing.assert_allclose(model.score_samples({"x": mixed}),
                               multivariate_normal(z.mean(axis=0), cov).logpdf(z)
                               - np.log(pre.scale).sum(), rtol=1e-6)


def test_spark_preprocessing_refuses_normal_scores_it_cannot_fit(mixed: np.ndarray) -> None:
    from mmgmm_spark.core.preprocessing import Moments
    from mmgmm_spark.models.fusion import Preprocessing

    config = FusionConfig(standardise=True, projection=None, normal_scores=True)
    with pytest.raises(ValueError, match="normal_scores needs quantiles"):
        Preprocessing.from_moments([Modality("x", 3)], {"x": Moments.of(mixed)}, config)
