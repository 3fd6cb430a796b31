"""Calibrated anomaly scores: comparable across missingness patterns, one false-positive rate
per pattern, Spark equal to in memory, stored with the model (and old models still load)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.core.batch import batch_from_arrays
from mmgmm_spark.core.calibration import (
    TAILS,
    calibration_from_histograms,
    fit_calibration,
    merge_histograms,
    pattern_codes,
    pattern_histograms,
)
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.data import cached_blocks
from mmgmm_spark.spark.score import score_dataframe, training_threshold

MODALITIES = (Modality("image", 6, "full"), Modality("text", 4, "full"),
              Modality("sensor", 3, "diag"))
CONTAMINATION = 0.02


@pytest.fixture(scope="module")
def train():
    return generate(30_000, MODALITIES, n_clusters=3, missing_fraction=0.3, seed=3)


@pytest.fixture(scope="module")
def detector(train):
    mixture = MultimodalGaussianMixture(list(MODALITIES), 3, random_state=0, reg_covar=1e-3)
    return AnomalyDetector.fit(mixture, train.features, CONTAMINATION)


def _patterns(features) -> np.ndarray:
    return pattern_codes([~np.isnan(features[m.name]).all(axis=1) for m in MODALITIES])


def test_calibrated_scores_of_normal_rows_do_not_depend_on_the_pattern(train, detector):
    """KS distance (scipy) between complete and each incomplete pattern's normal rows: raw
    scores far apart, calibrated scores within 0.05."""
    scores = detector.score(train.features)
    codes, normal = _patterns(train.features), ~train.is_anomaly
    complete = codes == 0b111
    incomplete = [c for c in np.unique(codes) if c != 0b111]
    assert len(incomplete) == 3
    for code in incomplete:
        rows = normal & (codes == code)
        raw = ks_2samp(scores["anomaly_score"][normal & complete],
                       scores["anomaly_score"][rows]).statistic
        calibrated = ks_2samp(scores["calibrated_score"][normal & complete],
                              scores["calibrated_score"][rows]).statistic
        assert raw > 0.3, (code, raw)
        assert calibrated <= 0.05, (code, calibrated)


def test_threshold_is_one_false_positive_rate_per_pattern(train, detector):
    """Every pattern's training rows are flagged at the contamination rate (to the
    histogram's resolution), and the flag is calibrated_score > -log10(contamination)."""
    scores = detector.score(train.features)
    codes = _patterns(train.features)
    for code in np.unique(codes):
        rows = codes == code
        assert scores["is_anomaly"][rows].mean() == pytest.approx(
            CONTAMINATION, abs=2.0 / rows.sum() + 1e-3), code
        expected = np.quantile(scores["anomaly_score"][rows], 1 - CONTAMINATION)
        far = np.abs(scores["anomaly_score"][rows] - expected) > 1e-3 * (1 + abs(expected))
        np.testing.assert_array_equal(scores["is_anomaly"][rows][far],
                                      scores["anomaly_score"][rows][far] > expected)


def test_table_quantiles_match_numpy_and_small_patterns_fall_back():
    """Stored quantiles equal numpy's (linear) to the histogram's resolution; a pattern with
    too few rows takes the pool of patterns with as many blocks, else all rows."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.chisquare(16, 20_000) + 10, rng.chisquare(6, 5_000),
                             rng.chisquare(3, 100), rng.chisquare(2, 50)])
    codes = np.repeat([0b111, 0b011, 0b101, 0b001], [20_000, 5_000, 100, 50])
    calibration = fit_calibration(scores, codes, ["a", "b", "c"], min_rows=500)
    for code in (0b111, 0b011):
        rows = scores[codes == code]
        reference = np.quantile(rows, 1 - TAILS[1 / rows.size <= TAILS])
        np.testing.assert_allclose(calibration.patterns[code].scores, reference, rtol=2e-3)
    assert set(calibration.patterns) == {0b111, 0b011}
    pooled_two = scores[(codes == 0b011) | (codes == 0b101)]
    assert calibration.table(0b101).n_rows == pooled_two.size
    np.testing.assert_allclose(calibration.table(0b101).scores,
                               np.quantile(pooled_two, 1 - TAILS[1 / pooled_two.size <= TAILS]),
                               rtol=2e-3)
    assert calibration.table(0b001) is calibration.overall          # pool of 50 rows: too few
    assert calibration.overall.n_rows == scores.size
    # the tail probability of a training score is its empirical one
    rows = scores[codes == 0b111]
    for value in np.quantile(rows, [0.5, 0.9, 0.99, 0.999]):
        tail = 10 ** -calibration.score(np.array([value]), np.array([0b111]))[0]
        assert tail == pytest.approx((rows >= value).mean(), rel=0.02)


def test_merged_partial_histograms_give_the_same_table():
    rng = np.random.default_rng(1)
    scores, codes = rng.gamma(3.0, 2.0, 9_000), rng.choice([3, 5, 7], 9_000)
    lo, hi = scores.min(), scores.max()
    parts = [pattern_histograms(scores[i::3], codes[i::3], lo, hi) for i in range(3)]
    merged = merge_histograms(merge_histograms(parts[0], parts[1]), parts[2])
    split = calibration_from_histograms(merged, lo, hi, ["a", "b", "c"])
    whole = fit_calibration(scores, codes, ["a", "b", "c"])
    for code in (3, 5, 7):
        np.testing.assert_array_equal(split.patterns[code].scores, whole.patterns[code].scores)


def test_rows_beyond_every_training_row_keep_their_order(detector, train):
    batch = batch_from_arrays(train.features, MODALITIES)
    codes = detector.patterns(batch)
    raw = np.linspace(0, 1e4, 2_000)
    for code in np.unique(codes):
        calibrated = detector.calibration.score(raw, np.full(raw.size, code))
        assert np.all(np.diff(calibrated) >= 0) and calibrated[-1] > 10


@pytest.mark.spark
def test_spark_calibration_and_scores_equal_in_memory(spark, train, detector):
    """The distributed table equals the in-memory one from the same scores; Spark scoring
    equals in-memory scoring to 1e-9."""
    features = train.features
    ids = np.arange(len(train.kind))
    table = arrow_table({m.name: features[m.name] for m in MODALITIES}, ids=ids)
    df = spark.createDataFrame(table).repartition(3)
    with cached_blocks(df, MODALITIES, "calibration test") as cached:
        on_spark = training_threshold(detector.model, cached, CONTAMINATION)
    in_memory = fit_calibration(-detector.model.score_samples(features), _patterns(features),
                                [m.name for m in MODALITIES])
    assert set(on_spark.calibration.patterns) == set(in_memory.patterns)
    for code, expected in in_memory.patterns.items():
        np.testing.assert_allclose(on_spark.calibration.patterns[code].scores, expected.scores,
                                   rtol=1e-9)
    scored = score_dataframe(df, detector).toPandas().sort_values("id")
    reference = detector.score(features)
    for name in ("anomaly_score", "calibrated_score"):
        np.testing.assert_allclose(scored[name].to_numpy(), reference[name], rtol=1e-9, atol=0)
    np.testing.assert_array_equal(scored["is_anomaly"].to_numpy(), reference["is_anomaly"])


def test_model_round_trip_and_old_files_without_a_table(detector, train, tmp_path, caplog):
    path = tmp_path / "model"
    detector.save(str(path))
    loaded = AnomalyDetector.load(str(path))
    expected, again = detector.score(train.features), loaded.score(train.features)
    for name, values in expected.items():
        np.testing.assert_array_equal(again[name], values)
    # an old model file: no calibration in its JSON
    for document_path in Path(path).rglob("*.json"):
        document = json.loads(document_path.read_text())
        anomaly = document.get("extra", {}).get("anomaly")
        if anomaly is not None:
            del anomaly["calibration"]
            document_path.write_text(json.dumps(document))
    with caplog.at_level(logging.WARNING):
        old = AnomalyDetector.load(str(path))
    assert old.calibration is None and "no calibration table" in caplog.text
    columns = old.score(train.features)
    assert np.isnan(columns["calibrated_score"]).all()
    np.testing.assert_array_equal(columns["is_anomaly"],
                                  columns["anomaly_score"] > detector.threshold)
