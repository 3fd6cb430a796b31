"""Every ``mmgmm`` subcommand through the real entry point, and bad input through the CLI.

Most cases call :func:`mmgmm_spark.app.cli.main` in-process (build_spark's getOrCreate reuses the
session-scoped ``spark`` fixture); the trained model every later test uses comes from a real
``mmgmm train`` subprocess. All tables and the MLflow store live in one temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from deltalake import DeltaTable, write_deltalake
from mlflow import MlflowClient

from mmgmm_spark.app.cli import main

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_ROWS = 600
DIMS = {"a": 3, "b": 2, "c": 2}
MODEL = "cli-model"


# ----------------------------------------------------------------------------- helpers
@dataclass
class Workspace:
    root: Path
    config: Path
    ids: np.ndarray
    data: dict[str, np.ndarray]
    b_rows: np.ndarray  # rows that observe modality b

    def table(self, name: str) -> Path:
        return self.root / "tables" / name

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def scores(self) -> Path:
        return self.table("scores")

    def tracking_uri(self) -> str:
        return f"sqlite:///{self.work.resolve() / 'mlflow.db'}"


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def message(self) -> str:
        """The one error paragraph ``mmgmm <command>: error: ...``."""
        lines = [line for line in self.err.splitlines() if re.match(r"mmgmm \w+: error: ", line)]
        assert len(lines) == 1, self.err
        return lines[0].split(": error: ", 1)[1]


def cli(capsys, *argv: str) -> Result:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return Result(code, out, err)


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit 2, one message (no traceback) containing every fragment (case-insensitive)."""
    assert result.code == 2, (result.code, result.out, result.err)
    assert "Traceback" not in result.err
    message = result.message
    for fragment in fragments:
        assert fragment.lower() in message.lower(), f"{fragment!r} not in: {message}"
    return message


def train_registered(capsys, ws: Workspace, name: str, table: Path,
                     *settings: str) -> tuple[list[str], str]:
    """``mmgmm train`` with ``settings`` registering ``name`` (scores to ``table``): the
    ``--set`` overrides used and the run id printed."""
    overrides = [item for setting in (*settings, f"tracking.registered_model={name}",
                                      f"scoring.output_table={table}")
                 for item in ("--set", setting)]
    trained = cli(capsys, "train", "--config", ws.config, *overrides)
    assert trained.code == 0, trained.err
    return overrides, re.search(r"run (\w+): registered", trained.out).group(1)


def read_delta(path: Path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pyarrow_table().to_pandas()


def delta_version(path: Path) -> int | None:
    return DeltaTable(str(path)).version() if (path / "_delta_log").is_dir() else None


def write_modality(path: Path, ids, features, *, value_type: pa.DataType | None = None,
                   column: str = "features") -> Path:
    """A modality Delta table written with deltalake (no Spark), rows as given."""
    rows = [None if f is None else list(f) for f in features]
    table = pa.table({"id": pa.array(list(ids), pa.string()),
                      column: pa.array(rows, pa.list_(value_type or pa.float64()))})
    write_deltalake(str(path), table, mode="overwrite")
    return path


def registered_versions(ws: Workspace, name: str = MODEL) -> int:
    client = MlflowClient(tracking_uri=ws.tracking_uri(), registry_uri=ws.tracking_uri())
    return len(client.search_model_versions(f"name='{name}'"))


def make_data(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, N_ROWS)
    data = {}
    for name, dim in DIMS.items():
        centres = rng.normal(0, 4, (2, dim))
        data[name] = centres[group] + rng.normal(0, 1, (N_ROWS, dim))
    ids = np.array([f"e{i:04d}" for i in range(N_ROWS)], dtype=object)
    return ids, data


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    root = tmp_path_factory.mktemp("cli")
    ids, data = make_data()
    config = {
        "work_dir": str(root / "work"),
        "spark": {"master": "local[2]"},
        "tracking": {"experiment": "cli-tests", "registered_model": MODEL, "alias": "champion"},
        "data": {"id_column": "id", "modalities": [
            {"name": "a", "table": str(root / "tables" / "a"), "covariance_type": "full"},
            {"name": "b", "table": str(root / "tables" / "b"), "covariance_type": "diag"},
            {"name": "c", "table": str(root / "tables" / "c"), "covariance_type": "full"}]},
        "model": {"n_components": 2, "max_iter": 40, "tol": 1.0e-3, "seed": 0},
        "scoring": {"contamination": 0.05, "output_table": str(root / "tables" / "scores")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    b_rows = np.flatnonzero(np.arange(N_ROWS) % 10 != 3)  # 10% of entities lack modality b
    return Workspace(root, path, ids, data, b_rows)


@pytest.fixture(scope="module", autouse=True)
def _no_tracking_env():
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MPLBACKEND", "Agg")
        yield


@pytest.fixture(scope="module")
def source_files(ws: Workspace) -> dict[str, Path]:
    """The three input formats: .npz (X, ids), Parquet (array column), CSV (column group)."""
    files = ws.root / "files"
    files.mkdir()
    np.savez(files / "a.npz", X=ws.data["a"], ids=ws.ids.astype(str))
    pq.write_table(pa.table({"id": pa.array(ws.ids[ws.b_rows], pa.string()),
                             "embedding": pa.array(list(ws.data["b"][ws.b_rows]),
                                                   pa.list_(pa.float64())),
                             "other": np.arange(len(ws.b_rows))}), files / "b.parquet")
    c = pd.DataFrame({"id": ws.ids, "note": "x"})
    for j in range(DIMS["c"]):
        c[f"c_{j}"] = ws.data["c"][:, j]
    c.to_csv(files / "c.csv", index=False)
    return {"a": files / "a.npz", "b": files / "b.parquet", "c": files / "c.csv"}


@pytest.fixture(scope="module")
def ingested(spark, ws: Workspace, source_files) -> Workspace:
    code = main(["ingest", "--config", str(ws.config),
                 "--modality", f"a={source_files['a']}",
                 "--modality", f"b={source_files['b']}:embedding",
                 "--modality", f"c={source_files['c']}:c_"])
    assert code == 0
    return ws


@pytest.fixture(scope="module")
def trained(ingested: Workspace) -> Workspace:
    """``mmgmm train`` as a real subprocess (the console script), end to end."""
    ws = ingested
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.run([_mmgmm(), "train", "--config", str(ws.config)], cwd=ws.root,
                             capture_output=True, text=True, env=env, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert re.search(r"run \w+: registered version 1;", process.stdout), process.stdout
    assert not (ws.root / "mlruns").exists()          # artefacts stay beside the store
    assert (ws.work / "mlartifacts").is_dir()
    return ws


def _mmgmm() -> str:
    script = shutil.which("mmgmm") or str(Path(sys.executable).parent / "mmgmm")
    if not Path(script).exists():
        pytest.skip("the mmgmm console script is not installed (pip install -e .)")
    return script


# ----------------------------------------------------------------------------- happy paths
def test_help_subprocess() -> None:
    process = subprocess.run([_mmgmm(), "--help"], capture_output=True, text=True, timeout=120)
    assert process.returncode == 0
    for command in ("demo", "ingest", "train", "score", "evaluate", "benchmark"):
        assert command in process.stdout


def test_ingest_formats_keep_ids_and_values(ingested: Workspace) -> None:
    ws = ingested
    a, b, c = (read_delta(ws.table(n)).set_index("id").sort_index() for n in "abc")
    assert list(a.index) == sorted(ws.ids)
    assert sorted(b.index) == sorted(ws.ids[ws.b_rows])
    assert list(c.index) == sorted(ws.ids)
    assert list(a.columns) == list(b.columns) == list(c.columns) == ["features"]
    order = np.argsort(ws.ids)
    np.testing.assert_allclose(np.stack(a["features"]), ws.data["a"][order])
    np.testing.assert_allclose(np.stack(c["features"]), ws.data["c"][order])
    b_order = ws.b_rows[np.argsort(ws.ids[ws.b_rows])]
    np.testing.assert_allclose(np.stack(b["features"]), ws.data["b"][b_order])


def test_train_registers_the_champion(trained: Workspace) -> None:
    client = MlflowClient(tracking_uri=trained.tracking_uri(),
                          registry_uri=trained.tracking_uri())
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"


def test_score_writes_and_rerun_replaces(trained: Workspace, capsys) -> None:
    ws = trained
    first = cli(capsys, "score", "--config", ws.config)
    assert first.code == 0, first.err
    run_id = re.search(r"scoring run (\w+)", first.out).group(1)
    scores = read_delta(ws.scores)
    rows = scores[scores["scoring_run_id"] == run_id]
    assert len(rows) == N_ROWS and rows["id"].is_unique
    assert set(rows["model_name"]) == {MODEL} and set(rows["model_version"]) == {"1"}
    for column in ("anomaly_score", "is_anomaly", "a_log_likelihood", "c_log_likelihood"):
        assert column in rows.columns
    missing_b = rows.set_index("id").loc[ws.ids[3::10], "b_log_likelihood"]
    assert missing_b.isna().all()
    version = delta_version(ws.scores)

    again = cli(capsys, "score", "--config", ws.config, "--scoring-run-id", run_id)
    assert again.code == 0, again.err
    assert delta_version(ws.scores) == version + 1
    after = read_delta(ws.scores)
    assert (after["scoring_run_id"] == run_id).sum() == N_ROWS
    assert len(after) == len(scores)

    elsewhere = str(ws.table("other-scores"))
    moved = cli(capsys, "score", "--config", ws.config, "--scoring-run-id", run_id,
                "--set", f"scoring.output_table={elsewhere}")
    assert moved.code == 2 and moved.err.count("\n") == 1
    assert (f"Scoring run {run_id} cannot be re-run with other inputs (output_table was "
            f"{str(ws.scores)!r}, now {elsewhere!r})") in moved.err
    assert not os.path.exists(elsewhere)


def test_train_and_score_with_preprocessing(ingested: Workspace, capsys) -> None:
    """The preprocessing section: standardisation and PCA fitted on Spark, one registered model
    that applies them, and scores in the table equal to what that model computes in memory."""
    from mmgmm_spark.models.fusion import FusionModel
    from mmgmm_spark.tracking import TrackingConfig, load_detector, tracking

    ws = ingested
    name, table = "cli-preprocessed", ws.table("preprocessed_scores")
    overrides, run_id = train_registered(capsys, ws, name, table, "preprocessing.standardise=true",
                                         "preprocessing.projection=2")
    other = cli(capsys, "train", "--config", ws.config, *overrides,
                "--set", "preprocessing.projection=1", "--resume", run_id)
    assert_user_error(other, run_id, "preprocessing", "'preprocessing.projection': '1'")
    scored = cli(capsys, "score", "--config", ws.config, *overrides)
    assert scored.code == 0, scored.err

    store = TrackingConfig(work_dir=str(ws.work), tracking_uri=ws.tracking_uri(),
                           experiment="cli-tests")
    with tracking(store):
        fused = load_detector(f"models:/{name}@champion").model
    assert isinstance(fused, FusionModel)
    assert {m.name: m.dim for m in fused.mixtures_["joint"].modalities} == {"a": 2, "b": 2, "c": 2}
    assert fused.preprocessors_["a"].components.shape == (2, 3)       # a: 3 -> 2 dimensions
    b = np.full_like(ws.data["b"], np.nan)
    b[ws.b_rows] = ws.data["b"][ws.b_rows]
    expected = fused.score_samples({"a": ws.data["a"], "b": b, "c": ws.data["c"]})
    rows = read_delta(table).set_index("id").loc[ws.ids]
    np.testing.assert_allclose(rows["log_likelihood"], expected, rtol=1e-9)
    assert rows.loc[ws.ids[3::10], "b_log_likelihood"].isna().all()

    for bad in ("true", "0", "x"):
        rejected = cli(capsys, "train", "--config", ws.config,
                       "--set", f"preprocessing.projection={bad}")
        assert_user_error(rejected, "preprocessing.projection", "'auto' or null")
    repeated = cli(capsys, "train", "--config", ws.config, "--set", "model.sweep.projection=[2, 2]")
    assert_user_error(repeated, "model.sweep.projection", "distinct")

    swept = cli(capsys, "train", "--config", ws.config, *overrides,
                "--set", "model.sweep.n_components=[1, 2]",
                "--set", "model.sweep.projection=[1, null]")
    assert swept.code == 0, swept.err
    assert re.search(r"registered version 2", swept.out), swept.out
    client = MlflowClient(tracking_uri=ws.tracking_uri(), registry_uri=ws.tracking_uri())
    parent = client.get_run(client.get_model_version(name, "2").run_id)
    assert parent.data.params["sweep.preprocessing"] == (
        "standardise-true_projection-1;standardise-true_projection-none")
    bics = {key: value for key, value in parent.data.metrics.items() if key.startswith("bic/")}
    assert len(bics) == 4 and parent.data.metrics["best_bic"] == min(bics.values())
    best = min(bics, key=bics.get)
    with tracking(store):
        chosen = load_detector(f"models:/{name}/2").model
    widths = {p.output_dim for p in chosen.preprocessors_.values()}
    assert widths == ({1} if best.endswith("projection-1") else {3, 2}), (best, widths)


def test_train_and_score_with_late_and_early_fusion(ingested: Workspace, capsys) -> None:
    """model.fusion late: one registered late model whose scores in the table equal what it
    computes in memory; early with a covariance sweep of its concatenated block; the
    combinations that cannot work are refused with the setting named."""
    from mmgmm_spark.models.fusion import EARLY
    from mmgmm_spark.tracking import TrackingConfig, load_detector, tracking

    ws = ingested
    name, table = "cli-late", ws.table("late_scores")
    overrides, run_id = train_registered(capsys, ws, name, table, "model.fusion=late",
                                         "model.n_components=1")
    assert_user_error(cli(capsys, "train", "--config", ws.config, *overrides, "--resume", run_id),
                      "--resume", "late")
    assert_user_error(cli(capsys, "train", "--config", ws.config, *overrides,
                          "--set", "model.sweep.n_components=[1, 2]"), "model.sweep", "late")
    assert_user_error(cli(capsys, "score", "--config", ws.config, *overrides,
                          "--set", "scoring.include_responsibilities=true"),
                      "include_responsibilities", "late")
    assert cli(capsys, "score", "--config", ws.config, *overrides).code == 0

    store = TrackingConfig(work_dir=str(ws.work), tracking_uri=ws.tracking_uri(),
                           experiment="cli-tests")
    with tracking(store):
        late = load_detector(f"models:/{name}@champion").model
    assert late.strategy == "late" and sorted(late.mixtures_) == ["a", "b", "c"]
    b = np.full_like(ws.data["b"], np.nan)
    b[ws.b_rows] = ws.data["b"][ws.b_rows]
    inputs = {"a": ws.data["a"], "b": b, "c": ws.data["c"]}
    columns = late.columns(inputs)
    rows = read_delta(table).set_index("id").loc[ws.ids]
    np.testing.assert_allclose(rows["log_likelihood"], columns["log_likelihood"], rtol=1e-9)
    np.testing.assert_allclose(rows["a_log_likelihood"], columns["a"], rtol=1e-9)
    assert rows.loc[ws.ids[3::10], "b_log_likelihood"].isna().all()

    early = cli(capsys, "train", "--config", ws.config, *overrides, "--set", "model.fusion=early",
                "--set", "model.sweep.n_components=[1, 2]",
                "--set", f"model.sweep.covariance_types=[{{{EARLY}: diag}}, {{{EARLY}: full}}]")
    assert early.code == 0, early.err
    with tracking(store):
        version = re.search(r"registered version (\d+)", early.out).group(1)
        fused = load_detector(f"models:/{name}/{version}").model
    assert fused.strategy == "early"
    assert [(m.name, m.dim) for m in fused.mixtures_[EARLY].modalities] == [(EARLY, 7)]
    early_table = ws.table("early_scores")
    scored = cli(capsys, "score", "--config", ws.config, *overrides,
                 "--set", f"scoring.model_uri=models:/{name}/{version}",
                 "--set", f"scoring.output_table={early_table}",
                 "--set", "scoring.include_responsibilities=true")
    assert scored.code == 0, scored.err
    rows = read_delta(early_table).set_index("id").loc[ws.ids]
    np.testing.assert_allclose(np.stack(rows["responsibilities"]),
                               fused.responsibilities(fused.to_batch(inputs)), rtol=1e-9)
    narrower = cli(capsys, "score", "--config", ws.config, *overrides,
                   "--set", f"scoring.model_uri=models:/{name}/{version}",
                   "--set", f"scoring.output_table={early_table}")
    assert_user_error(narrower, str(early_table), "missing columns ['responsibilities']",
                      "set another scoring.output_table")
    wrong = cli(capsys, "train", "--config", ws.config, *overrides, "--set", "model.fusion=early",
                "--set", "model.sweep.n_components=[1]",
                "--set", "model.sweep.covariance_types=[{a: diag}]")
    assert_user_error(wrong, "'a'", EARLY)


def test_evaluate_with_labels(trained: Workspace, capsys) -> None:
    ws = trained
    assert cli(capsys, "score", "--config", ws.config).code == 0
    labels = ws.table("labels")
    scores = read_delta(ws.scores).sort_values("scored_at").drop_duplicates("id", keep="last")
    worst = set(scores.nlargest(30, "anomaly_score")["id"])
    write_deltalake(str(labels), pa.table({"id": list(ws.ids),
                                           "is_anomaly": [i in worst for i in ws.ids]}))
    result = cli(capsys, "evaluate", "--config", ws.config, "--labels", labels)
    assert result.code == 0, result.err
    metrics = dict(re.findall(r"^(\w+): ([-\d.e+]+)$", result.out, re.MULTILINE))
    assert float(metrics["auroc"]) == pytest.approx(1.0)
    assert 0.0 <= float(metrics["average_precision"]) <= 1.0

    bad = cli(capsys, "evaluate", "--config", ws.config, "--labels", labels,
              "--label-column", "truth")
    assert_user_error(bad, str(labels), "'truth'")
    unknown_run = cli(capsys, "evaluate", "--config", ws.config, "--labels", labels,
                      "--scoring-run-id", "deadbeef")
    assert_user_error(unknown_run, "no rows of scoring run 'deadbeef'")
    other_ids = ws.root / "other-labels"
    write_deltalake(str(other_ids), pa.table({"id": ["x1", "x2"], "is_anomaly": [True, False]}))
    no_match = cli(capsys, "evaluate", "--config", ws.config, "--labels", other_ids)
    assert_user_error(no_match, f"No id of labels table {str(other_ids)!r} matches")
    one_class = ws.root / "one-class-labels"
    write_deltalake(str(one_class), pa.table({"id": list(ws.ids),
                                              "is_anomaly": [False] * len(ws.ids)}))
    assert_user_error(cli(capsys, "evaluate", "--config", ws.config, "--labels", one_class),
                      f"all {len(ws.ids)} matched rows are normal")


def test_demo_report_joint_model_sees_cross_modal(spark, ws: Workspace, capsys) -> None:
    demo = ws.root / "demo"
    conf = Path(__file__).resolve().parents[1] / "conf" / "local.yaml"
    result = cli(capsys, "demo", "--config", conf, "--rows", 6000,
                 "--set", f"work_dir={ws.work}",
                 *[arg for i, name in enumerate(("image", "text", "sensor"))
                   for arg in ("--set", f"data.modalities.{i}.table={demo / name}")],
                 "--set", f"scoring.output_table={demo / 'scores'}",
                 "--set", "tracking.registered_model=cli-demo",
                 "--set", "tracking.experiment=cli-demo",
                 "--set", "model.max_iter=60")
    assert result.code == 0, result.err
    assert re.search(r"^AUROC \d\.\d{4}", result.out, re.MULTILINE)
    rows = {kind: tuple(map(float, values)) for kind, *values in re.findall(
        r"^\s+(\w+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", result.out, re.MULTILINE)}
    joint, per_modality, forest = rows["cross_modal"]
    assert joint >= 0.9
    assert per_modality <= joint - 0.25
    assert forest <= joint - 0.05          # the concatenated features hide cross-modal rows
    reference = _demo_forest_aurocs()
    overall = float(re.search(r"^IsolationForest on the concatenated features: AUROC ([\d.]+)$",
                              result.out, re.MULTILINE).group(1))
    assert abs(overall - reference.pop("all")) < 5e-5
    assert rows.keys() == reference.keys() and all(
        abs(rows[kind][2] - value) < 5e-5 for kind, value in reference.items())
    assert len(read_delta(demo / "scores")) == 6000


def _demo_forest_aurocs(n_rows: int = 6000) -> dict[str, float]:
    """Per kind, the AUROC (vs normal rows) of scikit-learn's IsolationForest on the demo's
    generated rows (seed 0), missing modalities mean-imputed: the reference the demo prints."""
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    from mmgmm_spark.app.synthetic import generate

    data = generate(n_rows, seed=0)
    x = np.hstack(list(data.features.values()))
    x = np.where(np.isnan(x), np.nanmean(x, axis=0), x)
    score = -IsolationForest(random_state=0).fit(x).score_samples(x)
    normal = data.kind == "normal"
    return {"all": roc_auc_score(~normal, score),
            **{kind: roc_auc_score(data.kind[normal | (data.kind == kind)] == kind,
                                   score[normal | (data.kind == kind)])
               for kind in sorted(set(data.kind) - {"normal"})}}


def test_benchmark_adbench_tiny(tmp_path: Path, capsys) -> None:
    pytest.importorskip("mmgmm_spark.app.benchmark_adbench")
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (190, 3)), rng.normal(6, 1, (10, 3))])
    y = np.r_[np.zeros(190), np.ones(10)]
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "tiny.npz", X=x, y=y)
    out = tmp_path / "results" / "adbench.json"
    result = cli(capsys, "benchmark", "adbench", "--data-dir", tmp_path / "data", "--out", out)
    assert result.code == 0, result.err
    results = json.loads(out.read_text())
    assert "tiny" in json.dumps(results)
    assert out.with_suffix(".md").exists()


# ----------------------------------------------------------------------------- accepted input
def test_float32_and_vector_columns_are_accepted(spark, trained: Workspace, capsys) -> None:
    from pyspark.ml.functions import array_to_vector

    ws = trained
    f32 = write_modality(ws.table("a_float32"), ws.ids, ws.data["a"].astype(np.float32),
                         value_type=pa.float32())
    b = read_delta(ws.table("b"))
    vectors = ws.table("b_vector")
    from mmgmm_spark.storage import write_table

    frame = spark.createDataFrame(b).withColumn("features", array_to_vector("features"))
    write_table(spark, frame, str(vectors), mode="overwrite")
    result = cli(capsys, "train", "--config", ws.config,
                 "--set", f"data.modalities.0.table={f32}",
                 "--set", f"data.modalities.1.table={vectors}",
                 "--set", "tracking.registered_model=cli-accepted")
    assert result.code == 0, result.err
    assert "registered version 1" in result.out
    assert registered_versions(ws, "cli-accepted") == 1


def test_constant_feature_and_duplicated_rows_are_regularised(trained: Workspace, capsys,
                                                               caplog) -> None:
    ws = trained
    a = ws.data["a"].copy()
    a[:, 1] = 5.0                                   # a constant feature
    c = ws.data["c"].copy()
    c[: N_ROWS // 2] = c[0]                         # half the rows identical in c
    constant = write_modality(ws.table("a_const"), ws.ids, a)
    duplicated = write_modality(ws.table("c_dup"), ws.ids, c)
    result = cli(capsys, "train", "--config", ws.config,
                 "--set", f"data.modalities.0.table={constant}",
                 "--set", f"data.modalities.2.table={duplicated}",
                 "--set", "tracking.registered_model=cli-degenerate")
    assert result.code == 0, result.err
    assert registered_versions(ws, "cli-degenerate") == 1
    warned = [r.getMessage() for r in caplog.records if r.name == "py.warnings"]
    assert any("Modality 'a': feature(s) [1] have no variance" in w for w in warned), warned
    assert any(re.search(r"Modality 'c': \d{3} of the \d+ rows .* \(duplicated rows\)", w)
               for w in warned), warned


# ----------------------------------------------------------------------------- bad input: ingest
def test_ingest_rejects_bad_files_and_writes_nothing(spark, ws: Workspace, capsys,
                                                     tmp_path: Path) -> None:
    target = tmp_path / "never"
    config = ["--config", ws.config, "--set", f"data.modalities.0.table={target}"]

    duplicated = tmp_path / "dup.npz"
    np.savez(duplicated, X=np.ones((4, 2)), ids=np.array(["x", "y", "x", "z"]))
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={duplicated}"),
                      str(duplicated), "duplicate", "'id'")

    null_ids = tmp_path / "null.parquet"
    pq.write_table(pa.table({"id": ["x", None, "z"],
                             "features": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]}), null_ids)
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={null_ids}"),
                      str(null_ids), "null id")

    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"],
                             "features": [[1.0, 2.0], [3.0, 4.0, 5.0], [5.0, 6.0]]}), ragged)
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={ragged}"),
                      str(ragged), "lengths", "same width")

    no_group = tmp_path / "cols.csv"
    pd.DataFrame({"id": ["x"], "f_0": [1.0]}).to_csv(no_group, index=False)
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={no_group}:image_"),
                      str(no_group), "image_")
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={no_group}"),
                      str(no_group), "no array column 'features'", "PATH:COLUMNS")

    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"zz={no_group}"),
                      "--modality", "zz")
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"a={tmp_path / 'no.csv'}"),
                      "no.csv")

    # CSV ids are text ("007" stays "007"), so they cannot meet numeric ids of another file.
    zeros = tmp_path / "zeros.csv"
    zeros.write_text("id,f_0\n007,1.5\n010,2.5\n")
    numbers = tmp_path / "numbers.npz"
    np.savez(numbers, X=np.ones((2, 1)), ids=np.array([7, 10]))
    mixed = cli(capsys, "ingest", *config, "--set", f"data.modalities.1.table={tmp_path / 'b'}",
                "--modality", f"a={zeros}:f_", "--modality", f"b={numbers}")
    assert_user_error(mixed, "different types", "'a': 'string'", "'b': 'integer'")
    assert not target.exists()
    alone = tmp_path / "alone"
    assert cli(capsys, "ingest", "--config", ws.config, "--set",
               f"data.modalities.0.table={alone}", "--modality", f"a={zeros}:f_").code == 0
    ingested = read_delta(alone).sort_values("id")
    assert list(ingested["id"]) == ["007", "010"]
    np.testing.assert_array_equal(np.stack(ingested["features"]), [[1.5], [2.5]])


# ----------------------------------------------------------------------------- bad input: train
@pytest.fixture(scope="module")
def bad_tables(trained: Workspace) -> dict[str, Path]:
    """Variants of modality a's table, each with one problem (every 7th row affected)."""
    ws = trained
    ids, a = list(ws.ids), ws.data["a"]
    bad = ws.root / "bad"

    def variant(name: str, rows, ids_=ids, **kwargs) -> Path:
        return write_modality(bad / name, ids_, rows, **kwargs)

    def every_7th(value) -> list:
        rows = [list(r) for r in a]
        for i in range(0, N_ROWS, 7):
            rows[i] = value(rows[i])
        return rows

    return {
        "nan": variant("nan", every_7th(lambda r: [np.nan] + r[1:])),
        "inf": variant("inf", every_7th(lambda r: [np.inf] + r[1:])),
        "wide": variant("wide", [list(r) + [0.0] for r in a]),
        "ragged": variant("ragged", every_7th(lambda r: r[:2])),
        "null_ids": variant("null_ids", a, ids_=[None if i % 50 == 0 else x
                                                 for i, x in enumerate(ids)]),
        "dup_ids": variant("dup_ids", a, ids_=[ids[0]] + ids[:-1]),
        "empty": variant("empty", [], ids_=[]),
        "renamed": variant("renamed", a, column="embedding"),
        "tiny": variant("tiny", a[:5], ids_=ids[:5]),
    }


TRAIN_CASES = {
    # case: (table, extra overrides, fragments the message must contain)
    "nan": ("nan", [], ["'a'", "NaN"]),
    "inf": ("inf", [], ["'a'", "infinite"]),
    "wrong_width": ("wide", ["data.modalities.0.dim=3"], ["bad/wide", "'a'", "length", "3"]),
    "ragged": ("ragged", [], ["'a'", "length"]),
    "null_ids": ("null_ids", [], ["bad/null_ids", "null id", "'id'"]),
    "duplicate_ids": ("dup_ids", [], ["bad/dup_ids", "duplicate", "'id'"]),
    "empty": ("empty", [], ["bad/empty", "empty"]),
    "missing_table": ("does_not_exist", [], ["does_not_exist", "not found"]),
    "missing_column": ("renamed", [], ["bad/renamed", "'features'"]),
    "missing_column_config": ("renamed", ["data.modalities.0.features_column=vec"],
                              ["bad/renamed", "'vec'"]),
}


@pytest.mark.parametrize("case", TRAIN_CASES, ids=list(TRAIN_CASES))
def test_train_rejects_bad_tables(case: str, trained: Workspace, bad_tables, capsys) -> None:
    ws = trained
    table_name, overrides, fragments = TRAIN_CASES[case]
    table = bad_tables.get(table_name, ws.root / "bad" / table_name)
    before = registered_versions(ws)
    sets = [arg for o in [f"data.modalities.0.table={table}", *overrides] for arg in ("--set", o)]
    result = cli(capsys, "train", "--config", ws.config, *sets)
    assert_user_error(result, *fragments)
    assert registered_versions(ws) == before


def test_train_rejects_more_components_than_rows(trained: Workspace, bad_tables,
                                                 capsys) -> None:
    ws = trained
    before = registered_versions(ws)
    result = cli(capsys, "train", "--config", ws.config,
                 "--set", f"data.modalities.0.table={bad_tables['tiny']}",
                 "--set", "model.n_components=1000")
    assert_user_error(result, "n_components", "1000", "hold-out excluded")
    assert registered_versions(ws) == before


def test_config_errors_name_the_field_and_file(ws: Workspace, capsys, tmp_path: Path) -> None:
    document = yaml.safe_load(ws.config.read_text())
    document["model"]["n_component"] = 3
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(document))
    assert_user_error(cli(capsys, "train", "--config", typo), str(typo), "model.n_component:",
                      "unknown key")
    assert_user_error(cli(capsys, "train", "--config", ws.config,
                          "--set", "model.n_components=many"),
                      str(ws.config), "model.n_components", "integer", "(from --set)")
    assert_user_error(cli(capsys, "score", "--config", ws.config,
                          "--set", "data.modalities.0.weight=-1"),
                      "data.modalities.0.weight")
    assert_user_error(cli(capsys, "train", "--config", tmp_path / "absent.yaml"),
                      "absent.yaml", "does not exist")
    assert_user_error(cli(capsys, "train", "--config", ws.config, "--set", "model"), "--set")


# ----------------------------------------------------------------------------- bad input: score
def test_score_rejects_unknown_model_and_writes_nothing(trained: Workspace, capsys) -> None:
    ws = trained
    if delta_version(ws.scores) is None:
        assert cli(capsys, "score", "--config", ws.config).code == 0
    version = delta_version(ws.scores)
    for uri in ("models:/no-such-model@champion", f"models:/{MODEL}/99"):
        result = cli(capsys, "score", "--config", ws.config, "--set", f"scoring.model_uri={uri}")
        assert_user_error(result, uri, "mmgmm train")
    result = cli(capsys, "score", "--config", ws.config,
                 "--set", "tracking.alias=no_such_alias")
    assert_user_error(result, f"models:/{MODEL}@no_such_alias", "not found")
    result = cli(capsys, "score", "--config", ws.config, "--set", "scoring.model_uri=model.pkl")
    assert_user_error(result, "scoring.model_uri", "model.pkl")
    assert delta_version(ws.scores) == version


def test_score_rejects_modalities_that_do_not_match_the_model(trained: Workspace, bad_tables,
                                                              capsys) -> None:
    ws = trained
    if delta_version(ws.scores) is None:
        assert cli(capsys, "score", "--config", ws.config).code == 0
    version = delta_version(ws.scores)
    renamed = cli(capsys, "score", "--config", ws.config, "--set", "data.modalities.2.name=d")
    assert_user_error(renamed, "'c'", "'d'", MODEL)
    wider = cli(capsys, "score", "--config", ws.config,
                "--set", f"data.modalities.0.table={bad_tables['wide']}")
    assert_user_error(wider, "'a'", "4", "3")
    bad_values = cli(capsys, "score", "--config", ws.config,
                     "--set", f"data.modalities.0.table={bad_tables['inf']}")
    assert_user_error(bad_values, "bad/inf", "'a'", "infinite")
    assert delta_version(ws.scores) == version


# ----------------------------------------------------------------------------- resume
def _metric_history(ws: Workspace, run_id: str) -> list[tuple[int, float]]:
    client = MlflowClient(tracking_uri=ws.tracking_uri(), registry_uri=ws.tracking_uri())
    return sorted((m.step, m.value)
                  for m in client.get_metric_history(run_id, "mean_log_likelihood"))


@pytest.mark.slow
def test_train_resume_continues_a_killed_training_run(ingested: Workspace) -> None:
    """`mmgmm train` SIGKILLed after its first checkpoint; `mmgmm train --resume RUN_ID`
    finishes the same run, which ends equal to an uninterrupted `mmgmm train`."""
    ws = ingested
    sets = ["--set", "model.tol=0", "--set", "model.max_iter=25",
            "--set", "tracking.registered_model=resume-model"]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    checkpoints = ws.root / "work" / "checkpoints"
    shutil.rmtree(checkpoints, ignore_errors=True)
    process = subprocess.Popen(
        [_mmgmm(), "train", "--config", str(ws.config), *sets,
         "--set", "tracking.experiment=resume-killed"],
        cwd=ws.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(checkpoints.glob("*/checkpoint.npz")):
        assert process.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    (run_id,) = [p.name for p in checkpoints.iterdir()]
    resumed = _metric_history(ws, run_id)
    assert 1 <= len(resumed) < 25
    assert main(["train", "--config", str(ws.config), *sets, "--resume", run_id,
                 "--set", "tracking.experiment=resume-killed"]) == 0
    assert main(["train", "--config", str(ws.config), *sets,
                 "--set", "tracking.experiment=resume-reference"]) == 0
    client = MlflowClient(tracking_uri=ws.tracking_uri())
    reference = client.search_runs(
        [client.get_experiment_by_name("resume-reference").experiment_id])[0].info.run_id
    finished, expected = _metric_history(ws, run_id), _metric_history(ws, reference)
    assert [step for step, _ in finished] == list(range(1, 26))
    np.testing.assert_allclose([v for _, v in finished], [v for _, v in expected], rtol=1e-9)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_resume_accepts_a_run_logged_before_fusion_was_a_param(ingested: Workspace) -> None:
    """Runs with preprocessing logged before ``fusion`` became a run param were joint fits:
    --resume pins their tables instead of refusing them."""
    from mmgmm_spark.app import pipeline
    from mmgmm_spark.app.config import load_config
    from mmgmm_spark.models.fusion import preprocessing_params
    from mmgmm_spark.tracking.config import ensure_experiment

    ws = ingested
    config = load_config(ws.config, ["preprocessing.standardise=true"])
    client = MlflowClient(tracking_uri=ws.tracking_uri(), registry_uri=ws.tracking_uri())
    run_id = client.create_run(ensure_experiment(pipeline.tracking_config(config))).info.run_id
    for key, value in preprocessing_params(pipeline.fusion_config(config)).items():
        client.log_param(run_id, key, value)
    client.set_tag(run_id, "mmgmm.delta_tables",
                   json.dumps({name: {"version": 0} for name in DIMS}))
    pinned = pipeline.pinned_to_run(config, run_id)
    assert [m.version for m in pinned.data.modalities] == [0, 0, 0]
    changed = load_config(ws.config, ["preprocessing.standardise=false",
                                      "preprocessing.projection=2"])
    with pytest.raises(ValueError, match="resume with the run's settings"):
        pipeline.pinned_to_run(changed, run_id)


# ------------------------------------------------------------ weights and warm starts
def write_weights(ws: Workspace, name: str, ids, weights) -> Path:
    path = ws.table(name)
    write_deltalake(str(path), pa.table({"id": pa.array(list(ids), pa.string()),
                                         "w": pa.array(weights, pa.float64())}),
                    mode="overwrite")
    return path


def training_rows(spark, ws: Workspace) -> np.ndarray:
    """(n,) bool: rows outside the hold-out bucket (xxhash64(id) mod 20 != 0), by Spark."""
    from pyspark.sql import functions as F

    ids = spark.createDataFrame(pd.DataFrame({"id": ws.ids.astype(str)}))
    held = {row.id for row in ids.where(F.pmod(F.xxhash64("id"), F.lit(20)) == 0).collect()}
    return np.array([i not in held for i in ws.ids])


def registered_mixture(ws: Workspace, name: str, version: int):
    from mmgmm_spark.tracking import TrackingConfig, tracking
    from mmgmm_spark.tracking.scoring import load_registered

    config = TrackingConfig(work_dir=str(ws.work), tracking_uri=ws.tracking_uri())
    with tracking(config):
        return load_registered(config, f"models:/{name}/{version}").detector.model


def test_train_warm_start_with_weights_is_one_weighted_m_step(spark, ingested: Workspace,
                                                              capsys) -> None:
    """model.warm_start + model.weight_column, max_iter=1: the registered mixture is one
    weighted EM step from the champion, as the in-memory fit computes it on the same rows."""
    from mmgmm_spark import MultimodalGaussianMixture

    ws, name = ingested, "warm-model"
    weights = np.random.default_rng(5).integers(0, 3, N_ROWS).astype(float)
    table = write_weights(ws, "weights", ws.ids, weights)
    scores = ws.table("warm-scores")
    train_registered(capsys, ws, name, scores, "model.max_iter=3")
    train_registered(capsys, ws, name, scores, "model.warm_start=true", "model.weight_column=w",
                     f"model.weight_table={table}", "model.max_iter=1", "model.tol=0")
    champion, warm = registered_mixture(ws, name, 1), registered_mixture(ws, name, 2)
    train = training_rows(spark, ws)
    b = np.full_like(ws.data["b"], np.nan)
    b[ws.b_rows] = ws.data["b"][ws.b_rows]
    rows = {"a": ws.data["a"][train], "b": b[train], "c": ws.data["c"][train]}
    reference = MultimodalGaussianMixture(list(champion.modalities), 2, tol=0, max_iter=1)
    reference.fit(rows, sample_weight=weights[train], initial_model=champion,
                  on_iteration=None)
    np.testing.assert_allclose(warm.lower_bounds_, reference.lower_bounds_, rtol=1e-9)
    np.testing.assert_allclose(warm.weights_, reference.weights_, rtol=1e-9)
    for modality in DIMS:
        np.testing.assert_allclose(warm.means_[modality], reference.means_[modality],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(warm.covariances_[modality],
                                   reference.covariances_[modality], rtol=1e-9, atol=1e-12)


def test_train_refuses_bad_weights_and_mismatched_warm_starts(ingested: Workspace,
                                                              capsys) -> None:
    ws = ingested
    partial = write_weights(ws, "partial-weights", ws.ids[10:], np.ones(N_ROWS - 10))
    common = ["--set", "tracking.registered_model=warm-model"]
    result = cli(capsys, "train", "--config", ws.config, *common, "--set",
                 "model.weight_column=w", "--set", f"model.weight_table={partial}")
    assert_user_error(result, f"model.weight_table {str(partial)!r}",
                      "training row(s) have no row there")
    result = cli(capsys, "train", "--config", ws.config, *common, "--set",
                 "model.warm_start=true", "--set", "model.n_components=3")
    assert_user_error(result, "models:/warm-model@champion", "K=2 (the model's n_components=3)")
    result = cli(capsys, "train", "--config", ws.config, *common, "--set",
                 "model.warm_start=true", "--set", "preprocessing.standardise=true")
    assert_user_error(result, "model.warm_start", "without preprocessing")
