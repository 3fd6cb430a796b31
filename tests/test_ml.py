"""The pyspark.ml stages: fit = the project's distributed fit, transform = an independent numpy
reference, Pipeline save/load without pickle, Spark Connect, MLflow conversion, README example."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from mmgmm_spark import DataValidationError, Modality
from mmgmm_spark import MultimodalGaussianMixture as Mixture
from mmgmm_spark.ml import MultimodalGaussianMixture, from_mlflow, to_mlflow
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.models.fusion import FusionConfig, FusionModel
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.tracking.pyfunc import input_example, load_detector, log_detector
from tests.conftest import copy_empty_mlflow_store

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ml_pipeline.py"
SPEC = importlib.util.spec_from_file_location("ml_pipeline", SCRIPT)
ml_pipeline = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ml_pipeline)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    """1,500 rows of 3 clusters: image (3 features, every 10th row missing), text (2)."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 1500)
    image = rng.normal(size=(1500, 3)) + np.array([[0, 0, 0], [5, 5, 0], [0, 6, 6]])[labels]
    text = rng.normal(size=(1500, 2)) * 0.5 + np.array([[0, 0], [3, 0], [0, 3]])[labels]
    image[::10] = np.nan
    return {"image": image, "text": text}


@pytest.fixture(scope="module")
def classic(spark, arrays, tmp_path_factory):
    """The Pipeline run on the shared classic session (fit, transform, save, load, transform)."""
    return ml_pipeline.run(spark, arrays, str(tmp_path_factory.mktemp("classic")))


def reference(out, arrays, contamination=0.05):
    """Scores of the fitted parameters in plain numpy/scipy: log p, per-modality marginals,
    posterior, and the threshold as numpy's training-score quantile."""
    weights = out["weights"]
    image, text = arrays["image"], arrays["text"]
    seen = ~np.isnan(image).all(axis=1)
    log_image = np.full((len(image), len(weights)), np.nan)
    log_text = np.empty((len(text), len(weights)))
    for k in range(len(weights)):
        log_image[seen, k] = multivariate_normal(out["means_image"][k],
                                                 out["covariances_image"][k]).logpdf(image[seen])
        log_text[:, k] = multivariate_normal(out["means_text"][k],
                                             np.diag(out["covariances_text"][k])).logpdf(text)
    joint = np.log(weights) + log_text + np.where(seen[:, None], log_image, 0.0)
    log_likelihood = logsumexp(joint, axis=1)
    image_marginal = np.where(seen, logsumexp(np.log(weights) + np.nan_to_num(log_image),
                                              axis=1), np.nan)
    return {"logLikelihood": log_likelihood, "anomalyScore": -log_likelihood,
            "imageLogLikelihood": image_marginal,
            "textLogLikelihood": logsumexp(np.log(weights) + log_text, axis=1),
            "probability": np.exp(joint - log_likelihood[:, None]),
            "prediction": joint.argmax(axis=1),
            "threshold": np.quantile(-log_likelihood, 1 - contamination)}


def assert_same_scores(a, b, prefix_a, prefix_b, rtol=1e-9):
    for name in [*ml_pipeline.SCORES, "probability"]:
        np.testing.assert_allclose(a[f"{prefix_a}{name}"].astype(float),
                                   b[f"{prefix_b}{name}"].astype(float), rtol=rtol, atol=1e-12,
                                   err_msg=name)


def test_fit_is_the_projects_distributed_fit(spark, arrays):
    """Same seed and settings: the stage's parameters equal MultimodalGaussianMixture.fit(df)."""
    df = spark.createDataFrame(arrow_table(arrays)).repartition(3)
    stage = MultimodalGaussianMixture(featuresCols=["image", "text"], k=3,
                                      covarianceTypes=["full", "diag"], maxIter=15, tol=0.0,
                                      seed=5).fit(df)
    mixture = Mixture([Modality("image", 3, "full"), Modality("text", 2, "diag")], 3, tol=0.0,
                      max_iter=15, random_state=5).fit(df, on_iteration=None)
    np.testing.assert_allclose(stage.weights, mixture.weights_, rtol=1e-9)
    for name in ("image", "text"):
        np.testing.assert_allclose(stage.means[name], mixture.means_[name], rtol=1e-9)
        np.testing.assert_allclose(stage.covariances[name], mixture.covariances_[name],
                                   rtol=1e-9)
    assert stage.summary.logLikelihoodHistory == pytest.approx(mixture.lower_bounds_, rel=1e-9)
    assert stage.summary.numIter == 15


def test_pipeline_scores_equal_the_numpy_reference(classic, arrays):
    """After SQLTransformer + VectorAssembler: every output column, the threshold and the
    cluster sizes match an independent reference; the loaded PipelineModel scores the same."""
    expected = reference(classic, arrays)
    for name in ["logLikelihood", "anomalyScore", "imageLogLikelihood", "textLogLikelihood",
                 "probability"]:
        np.testing.assert_allclose(classic[f"before_{name}"].astype(float), expected[name],
                                   rtol=1e-9, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(classic["before_prediction"], expected["prediction"])
    assert float(classic["threshold"]) == pytest.approx(expected["threshold"], rel=1e-12)
    # isAnomaly: the calibrated score (training tail probability within the row's missingness
    # pattern) over -log10(contamination): monotone in the raw score within a pattern, and
    # the complete rows (their own table) flag the contamination share of themselves
    calibrated, flagged = classic["before_calibratedScore"], classic["before_isAnomaly"]
    np.testing.assert_array_equal(flagged, calibrated > -np.log10(0.05))
    complete = ~np.isnan(arrays["image"]).all(axis=1)
    for rows in (complete, ~complete):
        order = np.argsort(expected["anomalyScore"][rows])
        assert np.all(np.diff(calibrated[rows][order]) >= -1e-12)
    assert flagged[complete].mean() == pytest.approx(0.05, abs=0.005)
    np.testing.assert_array_equal(classic["cluster_sizes"],
                                  np.bincount(expected["prediction"], minlength=3))
    assert np.isnan(classic["before_imageLogLikelihood"][::10]).all()
    assert_same_scores(classic, classic, "before_", "after_", rtol=0)


def test_saved_pipeline_is_json_and_parquet_never_pickle(classic, tmp_path_factory):
    """Every file of the saved directory is Spark's JSON text, Parquet or a checksum/marker;
    none unpickles; the arrays read with pyarrow alone are the model's."""
    saved = next(Path(tmp_path_factory.getbasetemp()).glob("classic*/pipeline"))
    assert_json_and_parquet_only(saved)
    stage = next(saved.glob("stages/2_*"))
    metadata = json.loads(next((stage / "metadata").glob("part-*")).read_text())
    assert metadata["mmgmmFormat"] == "mmgmm-spark-ml/1"
    document = json.loads(next((stage / "model").glob("part-*")).read_text())
    assert document["format"] == "mmgmm-spark/1"
    rows = {r["name"]: r for r in pq.read_table(stage / "arrays").to_pylist()}
    np.testing.assert_array_equal(np.reshape(rows["m0_means"]["values"],
                                             rows["m0_means"]["shape"]), classic["means_image"])


def assert_json_and_parquet_only(saved: Path) -> None:
    """Every file under ``saved`` is JSON, Parquet or a marker, and none unpickles."""
    kinds = set()
    for path in (p for p in saved.rglob("*") if p.is_file()):
        content = path.read_bytes()
        with pytest.raises(Exception):  # noqa: B017 - any failure to unpickle will do
            pickle.loads(content)
        if path.name.endswith(".crc") or path.name == "_SUCCESS":
            kinds.add("marker")
        elif content[:4] == b"PAR1":
            kinds.add("parquet")
        else:
            json.loads(content)
            kinds.add("json")
    assert kinds == {"marker", "parquet", "json"}


@pytest.fixture(scope="module")
def fitted(spark, arrays):
    """(DataFrame with array columns, a K=3 model fitted on it with default Params)."""
    df = spark.createDataFrame(arrow_table(arrays))
    return df, MultimodalGaussianMixture(featuresCols=["image", "text"], k=3, maxIter=10).fit(df)


def test_transform_schema_declares_the_output_columns(fitted):
    """transformSchema is the schema transform produces (a vector features column too)."""
    from pyspark.ml.functions import array_to_vector

    df, model = fitted
    vectors = df.withColumn("text", array_to_vector("text"))
    declared = model.transformSchema(vectors.schema)
    actual = model.transform(vectors).schema
    assert [(f.name, f.dataType) for f in declared] == [(f.name, f.dataType) for f in actual]
    assert declared.names[-8:] == [*ml_pipeline.SCORES, "probability"]


def test_output_column_params_rename_or_drop_columns(fitted):
    df, fitted_model = fitted
    model = fitted_model.copy()
    model.setPredictionCol("cluster").setProbabilityCol("").setAnomalyScoreCol("score")
    out = model.transform(df)
    assert {"cluster", "score", "logLikelihood", "isAnomaly"} <= set(out.columns)
    assert "probability" not in out.columns and "prediction" not in out.columns
    with pytest.raises(DataValidationError, match=r"'cluster', .*already exist"):
        model.transform(out.drop("score"))
    assert "prediction" in fitted_model.transform(df).columns  # the copy's Params are its own


def test_bad_input_names_the_param_or_column(spark, arrays):
    df = spark.createDataFrame(arrow_table(arrays))
    with pytest.raises(ValueError, match="featuresCols is not set"):
        MultimodalGaussianMixture().fit(df)
    with pytest.raises(DataValidationError, match="'sound' is not in the DataFrame"):
        MultimodalGaussianMixture(featuresCols=["image", "sound"]).fit(df)
    with pytest.raises(DataValidationError, match="'id' has type bigint"):
        MultimodalGaussianMixture(featuresCols=["id"]).fit(df)
    with pytest.raises(ValueError, match="covarianceTypes has 1 value"):
        MultimodalGaussianMixture(featuresCols=["image", "text"], covarianceTypes=["diag"]).fit(df)
    with pytest.raises(ValueError, match="Param k must be an integer >= 1"):
        MultimodalGaussianMixture(featuresCols=["image", "text"], k=0).fit(df)
    with pytest.raises(ValueError, match="Param contamination must be in"):
        MultimodalGaussianMixture(featuresCols=["image"], contamination=0.7).fit(df)
    empty = df.withColumn("image", F.lit(None).cast("array<double>"))
    with pytest.raises(DataValidationError, match="'image' is null in every row"):
        MultimodalGaussianMixture(featuresCols=["image", "text"]).fit(empty)


def test_weight_col_and_initial_model_fit_as_repeated_rows_from_that_model(spark, arrays,
                                                                         fitted):
    """weightCol: integer weights = the rows repeated; initialModel: EM starts from exactly
    that model (so both fits share their start, which k-means seeding would not give)."""
    from pyspark.sql import functions as F  # noqa: N812

    df, start = fitted
    counts = np.random.default_rng(3).integers(0, 3, len(arrays["text"]))
    repeated = {m: np.repeat(v, counts, axis=0) for m, v in arrays.items()}
    weighted = spark.createDataFrame(arrow_table(arrays).append_column(
        "w", pa.array(counts.astype(float))))
    common = {"featuresCols": ["image", "text"], "k": 3, "maxIter": 5, "tol": 0.0}
    by_weight = MultimodalGaussianMixture(**common, weightCol="w",
                                          initialModel=start).fit(weighted)
    by_rows = MultimodalGaussianMixture(**common, initialModel=start).fit(
        spark.createDataFrame(arrow_table(repeated)))
    np.testing.assert_allclose(by_weight.weights, by_rows.weights, rtol=1e-9)
    for name in ("image", "text"):
        np.testing.assert_allclose(by_weight.means[name], by_rows.means[name], rtol=1e-9)
        np.testing.assert_allclose(by_weight.covariances[name], by_rows.covariances[name],
                                   rtol=1e-9)
    # maxIter=0 keeps exactly the initial model's parameters
    kept = MultimodalGaussianMixture(**{**common, "maxIter": 0}, initialModel=start).fit(df)
    np.testing.assert_array_equal(kept.means["image"], start.means["image"])
    with pytest.raises(ValueError, match="k|n_components"):
        MultimodalGaussianMixture(**{**common, "k": 2}, initialModel=start).fit(df)
    negative = weighted.withColumn("w", F.lit(-1.0))
    with pytest.raises(ValueError, match="'w'"):
        MultimodalGaussianMixture(**common, weightCol="w").fit(negative)


def test_unfitted_pipeline_saves_and_loads_its_params(tmp_path):
    """The estimator is a DefaultParams stage: an unfitted Pipeline round-trips its Params."""
    from pyspark.ml import Pipeline

    pipeline = ml_pipeline.pipeline()
    pipeline.write().overwrite().save(str(tmp_path / "unfitted"))
    loaded = Pipeline.load(str(tmp_path / "unfitted")).getStages()[-1]
    original = pipeline.getStages()[-1]
    assert isinstance(loaded, MultimodalGaussianMixture) and loaded.uid == original.uid
    for name in ("featuresCols", "k", "covarianceTypes", "maxIter", "tol", "seed",
                 "contamination", "probabilityCol"):
        assert loaded.getOrDefault(name) == original.getOrDefault(name), name


def test_incomplete_saved_model_is_a_clear_error(fitted, tmp_path):
    """A saved stage without its arrays (or with altered ones) does not load."""
    import shutil

    from mmgmm_spark import ModelFormatError
    from mmgmm_spark.ml import MultimodalGaussianMixtureModel

    _, model = fitted
    model.write().save(str(tmp_path / "stage"))
    shutil.rmtree(tmp_path / "stage" / "arrays")
    with pytest.raises(ModelFormatError, match="arrays cannot be read.*save it again"):
        MultimodalGaussianMixtureModel.load(str(tmp_path / "stage"))


# ------------------------------------------------------------------------- Spark Connect
@pytest.mark.slow
def test_pipeline_under_spark_connect(connect_url, classic, arrays, tmp_path, spark):
    """Under Connect (the session's shared server, ``tests/conftest.py``) the same Pipeline
    fits, transforms, saves and loads, with the classic session's numbers; the classic
    session loads what Connect saved and scores the same."""
    np.savez(tmp_path / "data.npz", **arrays)
    subprocess.run([sys.executable, str(SCRIPT), "--remote", connect_url,
                    str(tmp_path / "data.npz"), str(tmp_path), str(tmp_path / "out.npz")],
                   check=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    remote = dict(np.load(tmp_path / "out.npz"))
    assert_same_scores(remote, remote, "before_", "after_", rtol=0)
    assert_same_scores(remote, classic, "before_", "before_")
    np.testing.assert_allclose(remote["weights"], classic["weights"], rtol=1e-9)
    from pyspark.ml import PipelineModel

    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    local = ml_pipeline.scores(loaded.transform(ml_pipeline.frame(spark, arrays)))
    assert_same_scores({f"x{k}": v for k, v in local.items()}, remote, "x", "before_")


# ------------------------------------------------------------------------------ MLflow
def test_spark_model_and_registered_mlflow_model_convert(fitted, tmp_path):
    """to_mlflow registers the stage's detector; from_mlflow of the registered version
    transforms identically, and the pyfunc model predicts the same log-likelihoods."""
    with mlflow_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        _convert_both_ways(fitted, tmp_path)


@contextlib.contextmanager
def mlflow_store(uri: str):
    """Tracking and registry URIs set to ``uri`` for the block, then both unset (later tests
    set only the tracking URI: leave no registry URI behind)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_registry_uri("")
        os.environ.pop("MLFLOW_REGISTRY_URI", None)  # set_registry_uri exports it
        mlflow.set_tracking_uri(None)


def _convert_both_ways(fitted, tmp_path):
    df, model = fitted
    experiment = mlflow.create_experiment("ml", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment):
        to_mlflow(model, registered_model_name="mmgmm-ml-test")
    back = from_mlflow("models:/mmgmm-ml-test/1")
    columns = ["id", "logLikelihood", "isAnomaly", "prediction", "imageLogLikelihood"]
    first = model.transform(df).select(columns).orderBy("id").toPandas()
    second = back.transform(df).select(columns).orderBy("id").toPandas()
    assert first.equals(second)
    frame = df.orderBy("id").toPandas()
    predicted = mlflow.pyfunc.load_model("models:/mmgmm-ml-test/1").predict(frame[["image",
                                                                                 "text"]])
    np.testing.assert_allclose(predicted["log_likelihood"], first["logLikelihood"], rtol=1e-12)


# ------------------------------------------------------------- registered fusion models
FUSION_CONFIGS = {
    "early": FusionConfig("early", n_components=(3,), projection=2, standardise=True),
    "late": FusionConfig("late", n_components=(2, 3), projection=None, standardise=False),
}
"""``early`` with preprocessing (standardised, image projected by PCA to 2), and ``late``
without (so each modality's mixture sees the raw rows and scipy can score them)."""
ML_NAMES = {"logLikelihood": "log_likelihood", "anomalyScore": "anomaly_score",
            "calibratedScore": "calibrated_score", "isAnomaly": "is_anomaly",
            "prediction": "cluster", "imageLogLikelihood": "image_log_likelihood",
            "textLogLikelihood": "text_log_likelihood"}
"""The stage's output column -> the detector's score column."""


@pytest.fixture(scope="module")
def fusion_registry(arrays, tmp_path_factory):
    """(store URI, {strategy: in-memory detector}): each fitted on ``arrays`` and logged and
    registered as ``fusion-<strategy>`` version 1, as the jobs do (``log_detector``)."""
    work = tmp_path_factory.mktemp("fusion-mlflow")
    copy_empty_mlflow_store(work, tmp_path_factory)
    uri = f"sqlite:///{work / 'mlflow.db'}"
    modalities = [Modality("image", 3), Modality("text", 2)]
    detectors = {}
    with mlflow_store(uri):
        experiment = mlflow.create_experiment("fusion",
                                              artifact_location=str(work / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            for strategy, config in FUSION_CONFIGS.items():
                detector = AnomalyDetector.fit(FusionModel(modalities, config), arrays, 0.05)
                (work / strategy).mkdir()
                log_detector(detector, input_example(arrays), name=strategy,
                             registered_model_name=f"fusion-{strategy}",
                             staging_dir=str(work / strategy))
                detectors[strategy] = detector
    return uri, detectors


def late_reference(detector, arrays):
    """``late`` in scipy: each modality's mixture log-density of its raw rows (no
    preprocessing), standardised by the stored training statistics, averaged over the
    observed modalities; the prediction is the first observed modality's top component."""
    model = detector.model
    columns, standardised, posteriors = {}, [], {}
    for name, rows in arrays.items():
        mixture, seen = model.mixtures_[name], ~np.isnan(rows).all(axis=1)
        joint = np.stack([np.log(w) + multivariate_normal(mu, cov).logpdf(rows[seen])
                          for w, mu, cov in zip(mixture.weights_, mixture.means_[name],
                                                mixture.covariances_[name], strict=True)], 1)
        columns[f"{name}LogLikelihood"] = np.full(len(rows), np.nan)
        columns[f"{name}LogLikelihood"][seen] = logsumexp(joint, axis=1)
        posteriors[name] = np.full(len(rows), -1)
        posteriors[name][seen] = joint.argmax(axis=1)
        mean, std = model.late_stats_[name]
        standardised.append((columns[f"{name}LogLikelihood"] - mean) / std)
    columns["logLikelihood"] = np.nanmean(np.stack(standardised, axis=1), axis=1)
    columns["prediction"] = np.where(posteriors["image"] >= 0, posteriors["image"],
                                     posteriors["text"])
    return columns


def fusion_scores(df, probability: bool) -> dict[str, np.ndarray]:
    """The fusion stage's output columns ordered by id (probability as (n, K))."""
    from pyspark.ml.functions import vector_to_array

    extra = [vector_to_array(F.col("probability")).alias("p")] if probability else []
    rows = df.select("id", *ML_NAMES, *extra).orderBy("id").toPandas()
    out = {name: rows[name].to_numpy().astype(float) for name in ML_NAMES}
    if probability:
        out["probability"] = np.stack(rows["p"].to_numpy())
    return out


@pytest.mark.parametrize("strategy", ["early", "late"])
def test_registered_fusion_model_is_a_pipeline_stage(fusion_registry, spark, arrays, strategy,
                                                     tmp_path):
    """from_mlflow of a registered fusion model -> a Pipeline stage (after SQLTransformer +
    VectorAssembler) scoring as the in-memory detector (and, for late, scipy); saved and
    loaded as JSON + Parquet only, it scores the same; to_mlflow of the loaded stage logs a
    detector that scores the same."""
    from pyspark.ml import PipelineModel

    uri, detectors = fusion_registry
    detector = detectors[strategy]
    with mlflow_store(uri):
        stage = from_mlflow(f"models:/fusion-{strategy}/1")
    has_probability = strategy == "early"
    assert stage.getProbabilityCol() == ("probability" if has_probability else "")
    prep = ml_pipeline.pipeline().getStages()[:2]
    pipeline = PipelineModel(stages=[*prep, stage])
    df = ml_pipeline.frame(spark, arrays)
    scored = fusion_scores(pipeline.transform(df), has_probability)
    columns = detector.score(arrays)
    expected = {ml_name: columns[name] for ml_name, name in ML_NAMES.items()}
    if has_probability:
        expected["probability"] = detector.responsibilities(
            detector.model.to_batch(arrays))
        assert scored["probability"].shape == (len(arrays["text"]), stage.getK())
    else:
        expected_late = late_reference(detector, arrays)
        for name, values in expected_late.items():
            np.testing.assert_allclose(scored[name], values, rtol=1e-9, atol=1e-12,
                                       err_msg=name)
    for name, values in expected.items():
        np.testing.assert_allclose(scored[name], values.astype(float), rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(scored["logLikelihood"], detector.model.score_samples(arrays),
                               rtol=1e-9)

    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    again = fusion_scores(loaded.transform(df), has_probability)
    for name, values in scored.items():
        np.testing.assert_array_equal(again[name], values, err_msg=name)
    assert_json_and_parquet_only(tmp_path / "pipeline")
    document = json.loads(next((tmp_path / "pipeline").glob("stages/2_*/model/part-*"))
                          .read_text())
    assert document["format"] == "mmgmm-spark-fusion/1"
    assert document["config"]["strategy"] == strategy

    with mlflow_store(uri):
        experiment = mlflow.create_experiment(f"back-{strategy}",
                                              artifact_location=str(tmp_path / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = to_mlflow(loaded.stages[-1])
        logged = load_detector(info.model_uri)
    for name, values in detector.score(arrays).items():
        np.testing.assert_array_equal(logged.score(arrays)[name], values, err_msg=name)


def test_fusion_stage_k_probability_and_parameters(fusion_registry, spark, arrays):
    """early: k is its mixture's K; late: k, a probability column and the one-mixture
    properties are clear errors naming what to use; mixtures gives per-mixture access."""
    _, detectors = fusion_registry
    from mmgmm_spark.ml import MultimodalGaussianMixtureModel

    early = MultimodalGaussianMixtureModel(detectors["early"])
    assert early.getK() == detectors["early"].model.mixtures_["early"].n_components == 3
    late = MultimodalGaussianMixtureModel(detectors["late"])
    assert sorted(late.mixtures) == ["image", "text"]
    assert late.mixtures["text"].weights_.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"Param k is undefined .*'late'.*model.mixtures"):
        late.getK()
    for model in (early, late):
        with pytest.raises(TypeError, match=r"fusion model.*model.mixtures\[key\]"):
            model.weights  # noqa: B018 - the property raises
    df = ml_pipeline.frame(spark, arrays).withColumn("text", F.array("t0", "t1"))
    late.setProbabilityCol("probability")
    with pytest.raises(ValueError, match=r"Param probabilityCol .*setProbabilityCol\(''\)"):
        late.transform(df)


# ------------------------------------------------------------------------------ README
def test_readme_spark_ml_example_runs(spark, tmp_path, monkeypatch):
    """The README's pyspark.ml example, as written (with its own small DataFrame), saving
    under ``tmp_path`` (Spark resolves a relative path against the JVM's directory, which a
    chdir here does not move)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Spark ML pipelines", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert code.count('"gmm_pipeline"') == 2
    code = code.replace('"gmm_pipeline"', repr(str(tmp_path / "gmm_pipeline")))
    monkeypatch.chdir(tmp_path)
    namespace = {"spark": spark}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["scored"].count() == namespace["df"].count()
