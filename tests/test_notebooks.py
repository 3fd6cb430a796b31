"""The Databricks notebooks run end to end locally on small data.

Each notebook's source is split on ``# COMMAND ----------`` and its cells are executed in one
namespace, from a temporary directory holding ``conf/local.yaml`` (the notebooks' default
config widget) that points at small Delta tables. ``spark`` is not predefined, so the notebooks
build it with ``build_spark`` (getOrCreate returns the test session).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from deltalake import DeltaTable, write_deltalake

from mmgmm_spark.app import notebook_support

pytestmark = [pytest.mark.spark, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
N_ROWS = 400
B_MISSING = np.arange(N_ROWS) % 8 == 5


def cells(path: Path) -> list[str]:
    source = path.read_text()
    assert source.startswith("# Databricks notebook source\n")
    return [cell for cell in source.split("# COMMAND ----------") if cell.strip()]


def run_notebook(name: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    for index, cell in enumerate(cells(NOTEBOOKS / name)):
        exec(compile(cell, f"{name}[cell {index}]", "exec"), namespace)
    return namespace


class FakeWidgets:
    """``dbutils.widgets`` with given values (as if set in the Databricks UI)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.created: dict[str, tuple[str, str]] = {}

    def text(self, name: str, default: str, label: str) -> None:
        self.created[name] = (default, label)

    def get(self, name: str) -> str:
        return self.values.get(name, self.created[name][0])


@pytest.fixture(scope="module")
def project(spark, tmp_path_factory) -> Path:
    """A directory with conf/local.yaml and two small modality tables; the cwd of the tests."""
    root = tmp_path_factory.mktemp("notebooks")
    rng = np.random.default_rng(3)
    group = rng.integers(0, 3, N_ROWS)
    ids = [f"n{i:04d}" for i in range(N_ROWS)]
    for name, dim in (("a", 3), ("b", 2)):
        x = rng.normal(0, 5, (3, dim))[group] + rng.normal(0, 1, (N_ROWS, dim))
        keep = ~B_MISSING if name == "b" else np.ones(N_ROWS, bool)
        write_deltalake(str(root / "tables" / name), pa.table({
            "id": [i for i, k in zip(ids, keep, strict=True) if k],
            "features": pa.array(list(x[keep]), pa.list_(pa.float64()))}))
    config = {
        "work_dir": "work",
        "spark": {"master": "local[2]"},
        "tracking": {"experiment": "notebooks", "registered_model": "nb-model"},
        "data": {"modalities": [{"name": "a", "table": "tables/a"},
                                {"name": "b", "table": "tables/b", "covariance_type": "diag"}]},
        "model": {"n_components": 2, "max_iter": 30},
        "scoring": {"contamination": 0.05, "output_table": "tables/scores"},
    }
    (root / "conf").mkdir()
    (root / "conf" / "local.yaml").write_text(yaml.safe_dump(config))
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MPLBACKEND", "Agg")
        import matplotlib

        matplotlib.use("Agg")
        yield root


def test_every_notebook_is_databricks_source() -> None:
    names = sorted(p.name for p in NOTEBOOKS.glob("*.py"))
    assert names == ["01_explore_features.py", "02_train_sweep.py", "03_inspect_model.py",
                     "04_score.py", "05_mixture_features.py"]
    for name in names:
        parts = cells(NOTEBOOKS / name)
        assert len(parts) >= 3
        assert "widget(\"config\"" in parts[1]
        assert "if \"spark\" not in globals()" in parts[1]


def test_widget_uses_dbutils_on_databricks(monkeypatch) -> None:
    widgets = FakeWidgets({"config": "/Workspace/conf.yaml"})
    monkeypatch.setattr(notebook_support, "_dbutils", lambda: SimpleNamespace(widgets=widgets))
    assert notebook_support.widget("config", "conf/local.yaml", "Config") == "/Workspace/conf.yaml"
    assert notebook_support.widget("top_n", "20") == "20"
    assert widgets.created == {"config": ("conf/local.yaml", "Config"), "top_n": ("20", "top_n")}
    monkeypatch.setattr(notebook_support, "_dbutils", lambda: None)
    assert notebook_support.widget("config", "conf/local.yaml") == "conf/local.yaml"
    assert notebook_support.parse_overrides(" a=1; b.c=[1, 2]\nd=x ;") == [
        "a=1", "b.c=[1, 2]", "d=x"]


def test_01_explore_features(project: Path) -> None:
    ns = run_notebook("01_explore_features.py")
    assert ns["n_rows"] == N_ROWS
    overview = ns["overview"].set_index("modality")
    assert overview.loc["a", "dim"] == 3 and overview.loc["b", "dim"] == 2
    assert overview.loc["a", "missing"] == 0
    assert overview.loc["b", "missing"] == B_MISSING.sum()
    assert overview.loc["b", "observed"] == N_ROWS - B_MISSING.sum()
    assert ns["patterns"]["count"].sum() == N_ROWS
    assert list(ns["stats"]["a"]["dimension"]) == [0, 1, 2]
    assert ns["stats"]["b"]["std"].gt(0).all()


@pytest.fixture(scope="module")
def swept(project: Path) -> dict:
    """02 with k_values 1,2 set through (fake) Databricks widgets: a small sweep."""
    widgets = FakeWidgets({"k_values": "1,2"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(notebook_support, "_dbutils", lambda: SimpleNamespace(widgets=widgets))
        return run_notebook("02_train_sweep.py")


def test_02_train_sweep(swept: dict) -> None:
    assert swept["ks"] == [1, 2]
    assert swept["chosen_k"] in (1, 2)
    assert sorted(swept["bic"]["n_components"]) == [1, 2]
    best = swept["bic"].loc[swept["bic"]["bic"].idxmin(), "n_components"]
    assert best == swept["chosen_k"]
    assert str(swept["fit"].model_version) == "1"


def test_03_inspect_model(swept: dict) -> None:
    ns = run_notebook("03_inspect_model.py")
    assert (ns["model_name"], str(ns["model_version"])) == ("nb-model", "1")
    assert len(ns["model"].weights_) == swept["chosen_k"]
    assert set(ns["means"]) == {"a", "b"}
    assert len(ns["scores"]["anomaly_score"]) == N_ROWS
    for figure in (ns["weights_figure"], ns["figure"], ns["histogram_figure"]):
        assert figure.axes


def test_04_score(swept: dict, project: Path) -> None:
    ns = run_notebook("04_score.py")
    scores = DeltaTable(str(project / "tables" / "scores")).to_pyarrow_table().to_pandas()
    assert len(scores) == N_ROWS
    assert set(scores["scoring_run_id"]) == {ns["result"].scoring_run_id}
    top = ns["top"]
    assert len(top) == 20
    assert list(top.columns[-2:]) == ["a_log_likelihood", "b_log_likelihood"]
    assert top["anomaly_score"].is_monotonic_decreasing
    assert top["anomaly_score"].iloc[0] == pytest.approx(scores["anomaly_score"].max())


def test_03_inspect_model_of_late_fusion(swept: dict, project: Path) -> None:
    """03 on a late-fusion champion: one mixture per modality, each shown."""
    from mmgmm_spark.app import pipeline
    from mmgmm_spark.app.config import load_config

    overrides = ["model.fusion=late", "tracking.registered_model=nb-late"]
    config = load_config("conf/local.yaml", overrides)
    pipeline.train(notebook_support.spark_for(config), config)
    widgets = FakeWidgets({"overrides": "; ".join(overrides)})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(notebook_support, "_dbutils", lambda: SimpleNamespace(widgets=widgets))
        ns = run_notebook("03_inspect_model.py")
    assert ns["model_name"] == "nb-late"
    assert sorted(ns["mixtures"]) == ["a", "b"] and set(ns["means"]) == {"a", "b"}
    assert len(ns["scores"]["anomaly_score"]) == N_ROWS


def test_05_mixture_features(project: Path) -> None:
    """Generated image + text objects: the classifier on the mixture's features against the
    raw concatenated features, on the same labelled and test objects."""
    widgets = FakeWidgets({"rows": "3000", "labelled": "200"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(notebook_support, "_dbutils", lambda: SimpleNamespace(widgets=widgets))
        ns = run_notebook("05_mixture_features.py")
    table = DeltaTable(str(project / "work" / "tables" / "fusion_demo" / "features"))
    rows = table.to_pyarrow_table().to_pandas()
    assert len(rows) == 3000 and rows["id"].is_unique
    resp = np.stack(rows["responsibilities"])
    np.testing.assert_allclose(resp.sum(axis=1), 1.0, atol=1e-12)
    assert ns["result"].width == 6 + 6 * 16 + 6 * 8          # weights, image and text means
    comparison = ns["comparison"].set_index("features")["test accuracy"]
    assert list(comparison.index) == ["raw concatenated", "responsibilities", "fisher_vector"]
    assert ns["result"].model_name == "nb-model-fusion"
    assert comparison.between(1 / 6, 1.0).all()
    # the same split by hand: the notebook's accuracies are the classifier's, not made up
    from sklearn.linear_model import LogisticRegression

    mixture = ns["mixture"]["responsibilities"]
    train, test, group = ns["train"], ns["test"], ns["demo"].group
    by_hand = LogisticRegression(max_iter=2000).fit(mixture[train], group[train])
    assert comparison["responsibilities"] == pytest.approx(
        by_hand.score(mixture[test], group[test]))
