"""Row weights on every path of the jobs: preprocessing moments, ``joint``/``early``/``late``
fits, BIC, the training threshold, the calibration table and the drift reference.

The property: integer weights give exactly (1e-9) what the rows repeated give, from the same
initial parameters, and a zero-weight row is absent (the repeated data has no copy of it).
The threshold is also checked against numpy's quantile of the repeated rows' scores and the
standardisation against numpy's standard deviation of the repeated rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.core.quantiles import weighted_quantile
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import (
    FusionConfig,
    LatePart,
    Preprocessing,
    late_model,
    observing,
)
from mmgmm_spark.models.mixture import information_criteria
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import CachedBlocks, cached_blocks
from mmgmm_spark.spark.population import training_reference
from mmgmm_spark.spark.preprocess import fit_preprocessing
from mmgmm_spark.spark.score import training_summary, training_threshold

MODALITIES = (Modality("image", 4, "full"), Modality("text", 3, "diag"),
              Modality("sensor", 2, "full"))
K, N, CONTAMINATION = 2, 240, 0.05


@pytest.fixture(scope="module")
def rows():
    """{modality: (N, d)} (15% of rows miss text) and integer weights 0..3 (some zero)."""
    rng = np.random.default_rng(11)
    group = rng.integers(K, size=N)
    features = {m.name: rng.normal(size=(N, m.dim)) * (1 + group[:, None])
                + 3.0 * group[:, None] for m in MODALITIES}
    features["text"][rng.random(N) < 0.15] = np.nan
    return features, rng.integers(0, 4, size=N)


def repeated(features: dict, weights: np.ndarray) -> dict:
    return {name: np.repeat(values, weights, axis=0) for name, values in features.items()}


def frame(spark, features: dict, weights: np.ndarray | None):
    table = arrow_table(features)
    if weights is not None:
        table = table.append_column("w", pa.array(weights.astype(np.int32)))
    return spark.createDataFrame(table).repartition(3)


def fit_mixture(preprocessing: Preprocessing, data: CachedBlocks,
                start: MultimodalGaussianMixture | None
                ) -> tuple[MultimodalGaussianMixture, MultimodalGaussianMixture]:
    """The mixture fitted on ``data``'s transformed rows from ``start`` (None: from its own
    one-iteration fit), three EM iterations; and the start."""
    transformed = data.mapped(preprocessing.transform,
                              tuple(preprocessing.mixture_modalities()))
    try:
        if start is None:
            start = MultimodalGaussianMixture(preprocessing.mixture_modalities(), K, max_iter=1,
                                              random_state=0, allow_small_data=True)
            start.fit(transformed, on_iteration=None)
        mixture = MultimodalGaussianMixture(preprocessing.mixture_modalities(), K, tol=0,
                                            max_iter=3, allow_small_data=True)
        mixture.fit(transformed, initial_model=start, on_iteration=None)
        return mixture, start
    finally:
        transformed.unpersist()


def fused_model(preprocessing: Preprocessing, data: CachedBlocks,
                starts: dict | None) -> tuple[object, dict]:
    """The fitted fusion model as the jobs build it (``late``: one mixture per modality on
    the rows observing it, standardised by its training summary) and the starts used."""
    if preprocessing.strategy != "late":
        key = "all"
        mixture, start = fit_mixture(preprocessing, data, (starts or {}).get(key))
        return preprocessing.model(mixture, data.total_weight), {key: start}
    parts, used = {}, {}
    for m in preprocessing.modalities:
        single = preprocessing.for_modality(m.name)
        observed = data.mapped(observing(m.name), single.modalities)
        try:
            mixture, used[m.name] = fit_mixture(single, observed, (starts or {}).get(m.name))
            fitted = single.model(mixture, observed.total_weight)
            summary = training_summary(fitted, observed)
        finally:
            observed.unpersist()
        parts[m.name] = LatePart(fitted, summary.mean_log_likelihood,
                                 summary.std_log_likelihood)
    return late_model(preprocessing, parts, data.total_weight), used


def assert_same_preprocessing(a: Preprocessing, b: Preprocessing) -> None:
    for name, p in a.preprocessors.items():
        q = b.preprocessors[name]
        for field in ("mean", "scale", "components", "explained_variance"):
            np.testing.assert_allclose(getattr(p, field), getattr(q, field), rtol=1e-9,
                                       atol=1e-12, err_msg=f"{name}.{field}")
        assert p.noise_variance == pytest.approx(q.noise_variance, rel=1e-9)


def assert_same_calibration(a, b) -> None:
    first, second = a.to_dict(), b.to_dict()
    assert first["patterns"].keys() == second["patterns"].keys()
    for group in ("patterns", "pooled"):
        for code, table in first[group].items():
            assert table["n_rows"] == second[group][code]["n_rows"]
            np.testing.assert_allclose(table["scores"], second[group][code]["scores"],
                                       rtol=1e-9)
    np.testing.assert_allclose(first["overall"]["scores"], second["overall"]["scores"],
                               rtol=1e-9)


def assert_same_reference(a, b) -> None:
    assert a.n_rows == b.n_rows
    assert a.missing_share == pytest.approx(b.missing_share, rel=1e-12)
    for name, column in a.columns.items():
        np.testing.assert_allclose(column.edges, b.columns[name].edges, rtol=1e-9)
        np.testing.assert_array_equal(column.counts, b.columns[name].counts)
        assert column.quantiles == pytest.approx(b.columns[name].quantiles, rel=1e-9)


@pytest.mark.spark
@pytest.mark.parametrize("strategy", ["joint", "early", "late"])
def test_integer_weights_equal_repeated_rows_on_every_jobs_path(spark, rows, strategy):
    features, weights = rows
    copies = repeated(features, weights)
    config = FusionConfig(strategy=strategy, n_components=(K,), standardise=True, projection=2)
    with (cached_blocks(frame(spark, features, weights), MODALITIES, weight_column="w") as wb,
          cached_blocks(frame(spark, copies, None), MODALITIES) as rb):
        assert (wb.n_rows, wb.total_weight, rb.total_weight) == (N, weights.sum(), rb.n_rows)
        pw, pr = fit_preprocessing(wb, config, "weighted"), fit_preprocessing(rb, config, "copies")
        assert_same_preprocessing(pw, pr)
        observed = copies["image"]
        np.testing.assert_allclose(pw.preprocessors["image"].scale, observed.std(axis=0),
                                   rtol=1e-9)
        model_w, starts = fused_model(pw, wb, None)
        model_r, _ = fused_model(pr, rb, starts)
        for key, mixture in model_w.mixtures_.items():
            np.testing.assert_allclose(mixture.weights_, model_r.mixtures_[key].weights_,
                                       rtol=1e-9)
            np.testing.assert_allclose(mixture.lower_bounds_,
                                       model_r.mixtures_[key].lower_bounds_, rtol=1e-9)
        scores_w = training_threshold(model_w, wb, CONTAMINATION)
        scores_r = training_threshold(model_r, rb, CONTAMINATION)
        exact = np.quantile(-model_r.score_samples(copies), 1 - CONTAMINATION)
        assert scores_w.threshold == pytest.approx(exact, rel=1e-9)
        assert scores_w.threshold == pytest.approx(scores_r.threshold, rel=1e-9)
        assert scores_w.n_rows == scores_r.n_rows == weights.sum()
        bic_w = information_criteria(scores_w.mean_log_likelihood, scores_w.n_rows, 10)["bic"]
        bic_r = information_criteria(scores_r.mean_log_likelihood, scores_r.n_rows, 10)["bic"]
        assert bic_w == pytest.approx(bic_r, rel=1e-9)
        assert scores_w.std_log_likelihood == pytest.approx(scores_r.std_log_likelihood,
                                                            rel=1e-9)
        assert_same_calibration(scores_w.calibration, scores_r.calibration)
        detector_w = AnomalyDetector(model_w, CONTAMINATION, scores_w.threshold)
        detector_r = AnomalyDetector(model_r, CONTAMINATION, scores_r.threshold)
        assert_same_reference(training_reference(detector_w, wb, wb.sample(10 * N, 0)),
                              training_reference(detector_r, rb, rb.sample(10 * N, 0)))


def test_in_memory_threshold_and_calibration_weighted_equal_repeated(rows):
    """AnomalyDetector.set_threshold with weights: the threshold and calibration of the rows
    repeated (numpy's quantile); zero-weight rows absent."""
    features, weights = rows
    mixture = MultimodalGaussianMixture(list(MODALITIES), K, random_state=0)
    mixture.fit(features, on_iteration=None)
    detector, copies_detector = (AnomalyDetector(mixture, CONTAMINATION) for _ in range(2))
    batch = mixture.to_batch(features)
    detector.set_threshold(-mixture.score_samples(features), detector.patterns(batch),
                           weights.astype(float))
    copies = repeated(features, weights)
    copies_detector.set_threshold(-mixture.score_samples(copies),
                                  copies_detector.patterns(mixture.to_batch(copies)))
    assert detector.threshold == pytest.approx(
        np.quantile(-mixture.score_samples(copies), 1 - CONTAMINATION), rel=1e-12)
    assert_same_calibration(detector.calibration, copies_detector.calibration)
    values = -mixture.score_samples(features)
    assert weighted_quantile(values, 0.3, weights) == pytest.approx(
        np.quantile(np.repeat(values, weights), 0.3), rel=1e-12)
