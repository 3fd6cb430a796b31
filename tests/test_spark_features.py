"""Mixture features on Spark and through ``mmgmm features``, against the numpy reference of
``test_features`` (posteriors and Fisher scores written out with scipy), read back from Delta
with deltalake."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from deltalake import DeltaTable, write_deltalake
from test_features import multimodal_model, reference_bag_vectors, reference_scores

from mmgmm_spark.app.cli import main
from mmgmm_spark.core.batch import DataValidationError
from mmgmm_spark.models.features import MixtureFeatures
from mmgmm_spark.models.mixture import MultimodalGaussianMixture
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.features import bag_features, entity_features, features_to_delta

pytestmark = [pytest.mark.spark, pytest.mark.slow]


def read_delta(path: Path):
    return DeltaTable(str(path)).to_pyarrow_table().to_pandas()


def row_vectors(scores: np.ndarray) -> np.ndarray:
    """Improved Fisher vector of each row alone (signed square root, L2), written out."""
    z = np.sign(scores) * np.sqrt(np.abs(scores))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    modalities, params, blocks, data = multimodal_model()
    mixture = MultimodalGaussianMixture(list(modalities), 3)
    mixture.params_ = params
    return MixtureFeatures.of(mixture), blocks, data


def test_entity_features_to_delta_equal_reference(spark, model, tmp_path):
    features, blocks, data = model
    ids = np.array([f"e{i:03d}" for i in range(40)], dtype=object)
    df = spark.createDataFrame(arrow_table(data, ids)).repartition(3)
    table = tmp_path / "features"
    written = features_to_delta(spark, entity_features(df, features), str(table),
                                model_name="m", model_version="7")
    rows = read_delta(table).sort_values("id")
    assert written.version == DeltaTable(str(table)).version() == 0
    assert rows["id"].tolist() == sorted(ids)
    ref_resp, ref_scores = reference_scores(data, features.mixture.weights_, blocks)
    resp, vectors = np.stack(rows["responsibilities"]), np.stack(rows["fisher_vector"])
    np.testing.assert_allclose(resp, ref_resp, rtol=0, atol=1e-12)
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(vectors, row_vectors(ref_scores), rtol=1e-9, atol=1e-12)
    assert set(rows["model_version"]) == {"7"} and set(rows["model_name"]) == {"m"}
    # a failed write (a partly-NaN row) leaves the table as it was
    bad = {name: x.copy() for name, x in data.items()}
    bad["sen"][0, 0] = np.nan
    bad["sen"][0, 1] = 1.0
    with pytest.raises(DataValidationError, match="some but not all"):
        features_to_delta(spark, entity_features(
            spark.createDataFrame(arrow_table(bad, ids)), features), str(table),
            model_name="m", model_version="8")
    assert DeltaTable(str(table)).version() == 0


@pytest.mark.parametrize("key_type", ["string", "long"])
def test_bag_features_equal_reference_per_bag(spark, model, key_type):
    features, blocks, data = model
    keys = np.arange(40) % 6
    bags = keys.astype(object) if key_type == "long" else np.array(
        [f"bag{k}" for k in keys], dtype=object)
    table = arrow_table(data).append_column(
        "bag", pa.array(list(bags), pa.int64() if key_type == "long" else pa.string()))
    df = spark.createDataFrame(table).repartition(4)       # every bag split over partitions
    rows = bag_features(df, features, bag_column="bag").toPandas().sort_values("bag")
    ref_resp, ref_scores = reference_scores(data, features.mixture.weights_, blocks)
    expected = reference_bag_vectors(bags, ref_scores)
    assert rows["bag"].tolist() == sorted(expected)
    for _, row in rows.iterrows():
        inside = bags == row["bag"]
        assert row["n_rows"] == inside.sum()
        np.testing.assert_allclose(row["fisher_vector"], expected[row["bag"]], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(row["responsibilities"], ref_resp[inside].mean(axis=0),
                                   rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- the command
N_ROWS = 300
BAGS = 30


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory, monkeypatch_module):
    """Two modality tables of descriptors (``a`` diag d=3, ``b`` spherical d=2, 20% of rows
    without ``b``), each row also naming its entity in column ``entity``; a trained model."""
    root = tmp_path_factory.mktemp("features-cli")
    rng = np.random.default_rng(3)
    group = rng.integers(0, 3, N_ROWS)
    ids = [f"d{i:04d}" for i in range(N_ROWS)]
    entity = [f"obj{i % BAGS:02d}" for i in range(N_ROWS)]
    data = {"a": rng.normal(0, 3, (3, 3))[group] + rng.normal(0, 1, (N_ROWS, 3)),
            "b": rng.normal(0, 3, (3, 2))[group] + rng.normal(0, 1, (N_ROWS, 2))}
    has_b = np.arange(N_ROWS) % 5 != 0
    for name, rows in (("a", np.ones(N_ROWS, bool)), ("b", has_b)):
        write_deltalake(str(root / "tables" / name), pa.table({
            "id": pa.array(np.array(ids)[rows], pa.string()),
            "features": pa.array(list(data[name][rows]), pa.list_(pa.float64())),
            "entity": pa.array(np.array(entity)[rows], pa.string())}))
    data["b"][~has_b] = np.nan
    config = {
        "work_dir": str(root / "work"),
        "tracking": {"experiment": "features", "registered_model": "features-model",
                     "alias": "champion"},
        "data": {"id_column": "id", "modalities": [
            {"name": "a", "table": str(root / "tables" / "a"), "covariance_type": "diag"},
            {"name": "b", "table": str(root / "tables" / "b"),
             "covariance_type": "spherical"}]},
        "model": {"n_components": 3, "max_iter": 50, "seed": 0},
        "scoring": {"output_table": str(root / "tables" / "scores")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    assert main(["train", "--config", str(root / "config.yaml")]) == 0
    mlflow.set_tracking_uri(f"sqlite:///{root / 'work' / 'mlflow.db'}")
    try:
        from mmgmm_spark.tracking import load_detector

        mixture = load_detector("models:/features-model/1").model
    finally:
        mlflow.set_tracking_uri(None)
    return root, np.array(ids), np.array(entity), data, mixture


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MPLBACKEND", "Agg")
        yield patch


def mixture_blocks(mixture: MultimodalGaussianMixture) -> dict[str, dict]:
    k = mixture.n_components
    return {m.name: {"kind": m.covariance_type, "weight": m.weight,
                     "means": mixture.means_[m.name],
                     "cov": mixture.params.blocks[m.name].full_covariances(k)}
            for m in mixture.modalities}


def test_features_command_per_entity_and_per_bag(workspace, capsys):
    root, ids, entity, data, mixture = workspace
    config = str(root / "config.yaml")
    ref_resp, ref_scores = reference_scores(data, mixture.weights_, mixture_blocks(mixture))

    assert main(["features", "--config", config, "--output-table", str(root / "f")]) == 0
    out = capsys.readouterr().out
    assert "fisher_vector D=" in out and "weights 3, a.means 9, a.variances 9" in out
    rows = read_delta(root / "f").sort_values("id")
    assert rows["id"].tolist() == sorted(ids) and len(rows) == N_ROWS
    order = np.argsort(ids)
    resp = np.stack(rows["responsibilities"])
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(resp, ref_resp[order], rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.stack(rows["fisher_vector"]), row_vectors(ref_scores)[order],
                               rtol=1e-8, atol=1e-10)

    assert main(["features", "--config", config, "--output-table", str(root / "bags"),
                 "--bag-column", "entity"]) == 0
    bags = read_delta(root / "bags").sort_values("entity")
    expected = reference_bag_vectors(entity, ref_scores)
    assert bags["entity"].tolist() == sorted(expected) and len(bags) == BAGS
    assert (bags["n_rows"] == N_ROWS // BAGS).all()
    np.testing.assert_allclose(np.stack(bags["fisher_vector"]),
                               np.stack([expected[e] for e in bags["entity"]]),
                               rtol=1e-8, atol=1e-10)


def test_features_command_errors_name_the_problem(workspace, capsys):
    root = workspace[0]
    code = main(["features", "--config", str(root / "config.yaml"), "--output-table",
                 str(root / "never"), "--bag-column", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "no bag column 'nope'" in err and "Traceback" not in err
    assert not (root / "never").exists()
