"""Spark Connect end to end: ``mmgmm train``, ``score`` and ``evaluate`` (CLI subprocesses) with
``spark.remote`` against a Spark Connect server started here, on both storage engines, against
the same pipeline on a classic session in this process.

One server (local[2], Delta's jars, extension and catalog) serves every test; the delta-rs
engine is named explicitly, so the server's Delta extension does not switch it. References
are independent of the code under test where they can be: the scores tables are read back
with ``deltalake``, AUROC is scikit-learn's on those rows.
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

from tests.conftest import copy_empty_mlflow_store, long_test
from tests.spark_servers import registered_champion, server_env, start_connect_server

pytestmark = [pytest.mark.spark, pytest.mark.slow]

UDF_SCRIPT = Path(__file__).parent / "scripts" / "score_udf_connect.py"
ROWS = 3_000
SETTINGS = ["model.n_components=3", "model.max_iter=30", "tracking.experiment=connect"]
SCORE_COLUMNS = ["log_likelihood", "anomaly_score", "calibrated_score", "image_log_likelihood",
                 "text_log_likelihood", "sensor_log_likelihood"]


@pytest.fixture(scope="session")
def connect_url(tmp_path_factory):
    """``sc://127.0.0.1:<free port>`` of a Spark Connect server with Delta Lake's connector."""
    from mmgmm_spark.spark.session import (
        DELTA_CONF,
        DELTA_LOCAL_DEFAULTS,
        LOCAL_DEFAULTS,
        delta_package,
    )

    conf = {**LOCAL_DEFAULTS, **DELTA_LOCAL_DEFAULTS, **DELTA_CONF,
            "spark.pyspark.python": sys.executable}
    server, url = start_connect_server(tmp_path_factory.mktemp("connect"), conf, delta_package())
    yield url
    server.stop()


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


def _assert_same_runs(classic: Path, connect: Path, labels: Path,
                      classic_metrics: dict[str, float], connect_metrics: dict[str, float]):
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
    assert connect_metrics["auroc"] == pytest.approx(auroc, abs=1e-6)
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
    _assert_same_runs(classic, connect, labels[connect], classic_metrics, connect_metrics)
    return connect


def test_connect_cli_matches_classic_delta_rs(spark, connect_url, tmp_path_factory):
    """delta-rs engine: train/score/evaluate over Connect equal the classic session's, and
    the registered model's ``mlflow.pyfunc.spark_udf`` works on a Connect session too (the
    same scores as ``mmgmm score``)."""
    connect = _same_as_classic(spark, connect_url, tmp_path_factory, "delta-rs")
    assert "delta-rs" in _engine_of_last_commit(connect / "tables" / "scores")
    out = connect / "udf.parquet"
    subprocess.run([sys.executable, str(UDF_SCRIPT), connect_url, str(connect), str(out)],
                   env=server_env(), check=True, timeout=600)
    by_udf = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    scored = _scores(connect)
    assert by_udf["id"].tolist() == scored["id"].tolist()
    for column in SCORE_COLUMNS:
        np.testing.assert_allclose(by_udf[column], scored[column], rtol=1e-12, atol=1e-12)


@long_test
def test_connect_cli_matches_classic_delta_spark(delta_spark, connect_url, tmp_path_factory):
    """delta-spark engine: the same, the scores committed by Delta Lake's Spark connector
    on the Connect server."""
    connect = _same_as_classic(delta_spark, connect_url, tmp_path_factory, "delta-spark")
    assert "Delta-Lake" in _engine_of_last_commit(connect / "tables" / "scores")

