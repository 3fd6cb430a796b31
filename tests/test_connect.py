"""Spark Connect end to end (CLI subprocesses with ``spark.remote``) against the same commands
on a classic session in this process: ``mmgmm demo`` on the delta-rs engine (tables written,
trained, scored and evaluated over Connect), ``mmgmm train``, ``score`` and ``evaluate`` on the
delta-spark engine.

The session's one server (``connect_url`` in ``tests/conftest.py``: local[2], Delta's jars,
extension and catalog) serves every test; the delta-rs engine is named explicitly, so the
server's Delta extension does not switch it. References are independent of the code under
test where they can be: the scores tables are read back with ``deltalake``, AUROC is
scikit-learn's on those rows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable
from sklearn.metrics import roc_auc_score

from mmgmm_spark.app.cli import main
from tests.conftest import copy_empty_mlflow_store
from tests.spark_servers import registered_champion, server_env

pytestmark = [pytest.mark.spark, pytest.mark.slow]

UDF_SCRIPT = Path(__file__).parent / "scripts" / "score_udf_connect.py"
ROWS = 3_000
SETTINGS = ["model.n_components=3", "model.max_iter=30", "tracking.experiment=connect"]
SCORE_COLUMNS = ["log_likelihood", "anomaly_score", "calibrated_score", "image_log_likelihood",
                 "text_log_likelihood", "sensor_log_likelihood"]


def _config(work_dir: Path, engine: str):
    from mmgmm_spark.app.config import default_config_path, load_config

    return load_config(default_config_path(), [*SETTINGS, f"storage.engine={engine}",
                                               f"work_dir={work_dir}"])


def _prepare(spark, work_dir: Path, engine: str) -> Path:
    """The demo's tables (ROWS entities, seed 0) under ``work_dir``; returns the labels table."""
    from mmgmm_spark.app.demo import write_demo_tables

    labels = work_dir / "tables" / "labels"
    write_demo_tables(spark, _config(work_dir, engine), str(labels), n_rows=ROWS, seed=0)
    return labels


def _cli(*args: str, cwd: Path) -> str:
    """``python -m mmgmm_spark ARGS`` in a fresh process (this checkout first on its path)."""
    result = subprocess.run([sys.executable, "-m", "mmgmm_spark", *args], cwd=cwd, env=server_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result.stdout


def _connect_run(url: str, work_dir: Path, engine: str, labels: Path) -> dict[str, float]:
    sets = [a for s in [*SETTINGS, f"storage.engine={engine}", f"spark.remote={url}"]
            for a in ("--set", s)]
    common = ["--work-dir", str(work_dir), *sets]
    _cli("train", *common, cwd=work_dir)
    _cli("score", *common, cwd=work_dir)
    out = _cli("evaluate", *common, "--labels", str(labels), "--kind-column", "kind",
               cwd=work_dir)
    return {k: float(v) for k, v in re.findall(r"^(\w+): ([-\d.e]+)$", out, re.MULTILINE)}


def _classic_run(spark, work_dir: Path, engine: str, labels: Path) -> dict[str, float]:
    from mmgmm_spark.app import pipeline

    config = _config(work_dir, engine)
    pipeline.train(spark, config)
    pipeline.score(spark, config)
    return pipeline.evaluate(spark, config, str(labels), kind_column="kind")


def _registered_model(work_dir: Path):
    return registered_champion(work_dir, "mmgmm-demo")


def _scores(work_dir: Path):
    return (DeltaTable(str(work_dir / "tables" / "scores")).to_pandas()
            .sort_values("id").reset_index(drop=True))


def _assert_same_models_and_scores(classic: Path, connect: Path, labels: Path,
                                   connect_auroc: float, printed_to: float = 1e-6) -> None:
    """The registered models' parameters (1e-9) and threshold, the scores tables read with
    ``deltalake``, and ``connect_auroc`` equal to scikit-learn's on the Connect run's rows
    (within ``printed_to``, the precision it was printed with)."""
    a, b = _registered_model(classic), _registered_model(connect)
    np.testing.assert_allclose(b.model.weights_, a.model.weights_, rtol=1e-9, atol=1e-12)
    for name in a.model.means_:
        np.testing.assert_allclose(b.model.means_[name], a.model.means_[name], rtol=1e-9,
                                   atol=1e-9)
        np.testing.assert_allclose(b.model.covariances_[name], a.model.covariances_[name],
                                   rtol=1e-9, atol=1e-9)
    assert b.threshold == pytest.approx(a.threshold, rel=1e-9)
    sa, sb = _scores(classic), _scores(connect)
    assert len(sb) == ROWS and sb["id"].is_unique and sb["id"].tolist() == sa["id"].tolist()
    for column in SCORE_COLUMNS:
        np.testing.assert_allclose(sb[column], sa[column], rtol=1e-9, atol=1e-9)
    assert sb["is_anomaly"].tolist() == sa["is_anomaly"].tolist()
    assert sb["cluster"].tolist() == sa["cluster"].tolist()
    truth = DeltaTable(str(labels)).to_pandas().set_index("id").loc[sb["id"]]
    ranking, _ = b.ranking()  # evaluate ranks by the calibrated score
    auroc = roc_auc_score(truth["is_anomaly"], sb[ranking])
    assert connect_auroc == pytest.approx(auroc, abs=printed_to)


def _assert_same_metrics(classic_metrics: dict[str, float], connect_metrics: dict[str, float]):
    for name in ("auroc", "average_precision", "precision_at_threshold", "recall_at_threshold"):
        assert connect_metrics[name] == pytest.approx(classic_metrics[name], abs=1e-6)


def _engine_of_last_commit(table: Path) -> str:
    return DeltaTable(str(table)).history(1)[0].get("engineInfo", "")


def _same_as_classic(spark, connect_url: str, tmp_path_factory, engine: str) -> Path:
    """The classic run in this process and the Connect run through the CLI, each in its own
    work directory on equal tables; asserts they agree; returns the Connect work dir."""
    root = tmp_path_factory.mktemp(engine)
    classic, connect = root / "classic", root / "connect"
    labels = {}
    for work_dir in (classic, connect):
        labels[work_dir] = _prepare(spark, work_dir, engine)
        copy_empty_mlflow_store(work_dir, tmp_path_factory)
    classic_metrics = _classic_run(spark, classic, engine, labels[classic])
    connect_metrics = _connect_run(connect_url, connect, engine, labels[connect])
    _assert_same_models_and_scores(classic, connect, labels[connect], connect_metrics["auroc"])
    _assert_same_metrics(classic_metrics, connect_metrics)
    return connect


def _demo_args(work_dir: Path, *settings: str) -> list[str]:
    sets = [*SETTINGS, "storage.engine=delta-rs", *settings]
    return ["demo", "--rows", str(ROWS), "--work-dir", str(work_dir),
            *[a for s in sets for a in ("--set", s)]]


def _report(out: str) -> str:
    """The demo report's numbers (from its title to the line naming the tables' paths)."""
    return out[out.index("=== mmgmm-spark demo report"):out.index("\nDelta tables:")]


def test_connect_demo_matches_classic_delta_rs(spark, connect_url, tmp_path_factory, capsys):
    """``mmgmm demo`` over Connect (delta-rs engine) prints the classic demo's report and
    registers and scores the same; the registered model's ``mlflow.pyfunc.spark_udf`` works
    on a Connect session too (the same scores as the demo's scoring)."""
    root = tmp_path_factory.mktemp("demo")
    classic, connect = root / "classic", root / "connect"
    for work_dir in (classic, connect):
        copy_empty_mlflow_store(work_dir, tmp_path_factory)
    assert main(_demo_args(classic)) == 0
    classic_out = capsys.readouterr().out
    connect_out = _cli(*_demo_args(connect, f"spark.remote={connect_url}"), cwd=connect)
    assert _report(connect_out) == _report(classic_out)
    printed_auroc = float(re.search(r"^AUROC (\d\.\d+)", connect_out, re.MULTILINE).group(1))
    _assert_same_models_and_scores(classic, connect, connect / "tables" / "labels",
                                   printed_auroc, printed_to=5e-5)
    assert "delta-rs" in _engine_of_last_commit(connect / "tables" / "scores")
    out = connect / "udf.parquet"
    subprocess.run([sys.executable, str(UDF_SCRIPT), connect_url, str(connect), str(out)],
                   env=server_env(), check=True, timeout=600)
    by_udf = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    scored = _scores(connect)
    assert by_udf["id"].tolist() == scored["id"].tolist()
    for column in SCORE_COLUMNS:
        np.testing.assert_allclose(by_udf[column], scored[column], rtol=1e-12, atol=1e-12)


def test_connect_cli_matches_classic_delta_spark(delta_spark, connect_url, tmp_path_factory):
    """delta-spark engine: the same, the scores committed by Delta Lake's Spark connector
    on the Connect server."""
    connect = _same_as_classic(delta_spark, connect_url, tmp_path_factory, "delta-spark")
    assert "Delta-Lake" in _engine_of_last_commit(connect / "tables" / "scores")
    _assert_demo_tables_by_delta_lake(connect / "tables")


def _assert_demo_tables_by_delta_lake(tables: Path) -> None:
    """Every commit of the demo's tables under ``tables`` was made by Delta Lake's Spark
    connector, and ``deltalake`` reads each modality table as the generated entities that
    observe it (features equal)."""
    from mmgmm_spark.app.synthetic import DEMO_MODALITIES, generate

    for name in ("image", "text", "sensor", "labels", "scores"):
        engines = {c.get("engineInfo", "") for c in DeltaTable(str(tables / name)).history()}
        assert engines and all("Delta-Lake" in e for e in engines), (name, engines)
    data = generate(ROWS, DEMO_MODALITIES, seed=0)
    for name, x in data.features.items():
        observed = np.flatnonzero(~np.isnan(x).all(axis=1))
        frame = DeltaTable(str(tables / name)).to_pandas().sort_values("id")
        assert frame["id"].tolist() == [f"entity-{i:07d}" for i in observed]
        np.testing.assert_array_equal(np.stack(frame["features"].to_numpy()), x[observed])

