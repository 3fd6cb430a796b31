"""Drift monitoring: PSI / KS against numpy and scipy, and ``mmgmm monitor`` on generated
data with and without an injected +4 shift of one modality."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from deltalake import DeltaTable, write_deltalake
from mlflow import MlflowClient
from scipy import stats

from mmgmm_spark.app.cli import main
from mmgmm_spark.core.drift import PSI_FLOOR, bin_counts, ks_statistic, psi, quantile_edges


def test_psi_and_ks_match_numpy_and_scipy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 1, 3000), rng.normal(0.3, 1.2, 2000)
    edges = quantile_edges(x, 10)
    e = np.histogram(x, np.r_[-np.inf, edges, np.inf])[0] / len(x)
    a = np.histogram(y, np.r_[-np.inf, edges, np.inf])[0] / len(y)
    e, a = np.maximum(e, PSI_FLOOR), np.maximum(a, PSI_FLOOR)
    assert psi(bin_counts(x, edges), bin_counts(y, edges)) == pytest.approx(
        np.sum((a - e) * np.log(a / e)), rel=1e-12)
    # with an edge at every value the binned statistic is the exact two-sample KS
    every = np.unique(np.r_[x, y])
    assert ks_statistic(bin_counts(x, every), bin_counts(y, every)) == pytest.approx(
        stats.ks_2samp(x, y).statistic, abs=1e-12)
    # on 10 reference bins it is a lower bound within the largest bin share
    coarse = ks_statistic(bin_counts(x, edges), bin_counts(y, edges))
    assert stats.ks_2samp(x, y).statistic - 0.1 - 1e-9 <= coarse <= stats.ks_2samp(
        x, y).statistic + 1e-12


N_ROWS, DIMS = 2000, {"a": 3, "b": 2}


def _table(ids, x):
    import pyarrow as pa

    return pa.table({"id": pa.array(list(ids), pa.string()),
                     "features": pa.array(list(x), pa.list_(pa.float64()))})


@pytest.fixture(scope="module")
def ws(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(0)
    ids = np.array([f"e{i:05d}" for i in range(N_ROWS)], dtype=object)
    group = rng.integers(0, 2, N_ROWS)
    for name, dim in DIMS.items():
        x = rng.normal(0, 4, (2, dim))[group] + rng.normal(0, 1, (N_ROWS, dim))
        keep = np.arange(N_ROWS) % 10 != 3 if name == "b" else np.ones(N_ROWS, bool)
        write_deltalake(str(root / name), _table(ids[keep], x[keep]))
    config = {
        "work_dir": str(root / "work"),
        "tracking": {"experiment": "drift-tests", "registered_model": "drift"},
        "data": {"modalities": [{"name": n, "table": str(root / n)} for n in DIMS]},
        "model": {"n_components": 2, "max_iter": 30, "seed": 0},
        "scoring": {"output_table": str(root / "scores")},
        "monitoring": {"table": str(root / "monitoring")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MPLBACKEND", "Agg")
        assert main(["train", "--config", str(root / "config.yaml")]) == 0
        yield root


def numpy_psi(ref: dict, values: np.ndarray) -> float:
    """PSI of ``values`` on the stored reference bins, by numpy."""
    current = np.bincount(np.searchsorted(ref["edges"], values[np.isfinite(values)],
                                          side="right"), minlength=len(ref["counts"]))
    e = np.maximum(np.array(ref["counts"]) / sum(ref["counts"]), PSI_FLOOR)
    a = np.maximum(current / current.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def run(ws: Path, capsys, *argv: str) -> tuple[int, str]:
    code = main([argv[0], "--config", str(ws / "config.yaml"), *argv[1:]])
    return code, capsys.readouterr().out


def client(ws: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{ws / 'work' / 'mlflow.db'}")


@pytest.mark.spark
def test_monitor_is_quiet_without_drift_and_flags_the_shifted_modality(ws, capsys):
    code, out = run(ws, capsys, "score")
    assert code == 0
    code, out = run(ws, capsys, "monitor")
    assert code == 0 and "no drift" in out, out

    run_id = re.search(r"scoring run (\w+) ", out).group(1)
    logged = client(ws).get_run(run_id).data.metrics
    # PSI logged = numpy PSI of the stored reference counts vs the scored rows (deltalake)
    model_run = client(ws).get_model_version("drift", "1").run_id
    reference = json.loads(Path(client(ws).download_artifacts(
        model_run, "drift/reference.json")).read_text())
    scores = DeltaTable(str(ws / "scores")).to_pyarrow_table().to_pandas()
    for column in ("anomaly_score", "a_log_likelihood", "b_log_likelihood"):
        assert logged[f"drift.psi.{column}"] == pytest.approx(
            numpy_psi(reference["columns"][column], scores[column].to_numpy()))
    assert logged["drift.missing_share.b"] == pytest.approx(0.1)
    assert sum(reference["columns"]["anomaly_score"]["counts"]) == reference["n_rows"]

    table = DeltaTable(str(ws / "b")).to_pyarrow_table().to_pandas()
    write_deltalake(str(ws / "b"), _table(table["id"], table["features"].map(
        lambda f: list(np.asarray(f) + 4.0))), mode="overwrite")
    code, out = run(ws, capsys, "score", "--incremental")
    assert code == 0 and "1800 scored" in out, out
    # the incremental run's population (base profile - old + new scores) = the newest score
    # of every id in the output table, binned by numpy
    incremental = client(ws).get_run(re.search(r"scoring run (\w+),", out).group(1))
    table = DeltaTable(str(ws / "scores")).to_pyarrow_table().to_pandas()
    latest = table.sort_values("scored_at").groupby("id").tail(1)
    assert incremental.data.metrics["drift.n_rows"] == len(latest) == N_ROWS
    for column in ("anomaly_score", "b_log_likelihood"):
        assert incremental.data.metrics[f"drift.psi.{column}"] == pytest.approx(
            numpy_psi(reference["columns"][column], latest[column].to_numpy()))
        # the median, read from a 2048-bin grid over 3 spans of the edges (clamped to it)
        edges = np.asarray(reference["columns"][column]["edges"])
        span = edges[-1] - edges[0]
        median = np.clip(np.nanmedian(latest[column]), edges[0] - span, edges[-1] + span)
        assert incremental.data.metrics[f"drift.quantile.{column}.0.5"] == pytest.approx(
            median, abs=3 * span / 2048)
    assert incremental.data.metrics["drift.missing_share.b"] == pytest.approx(0.1)
    code, out = run(ws, capsys, "monitor")
    assert code == 3, out
    assert "DRIFT: modality 'b' drifted" in out and "modality 'a'" not in out
    rows = DeltaTable(str(ws / "monitoring")).to_pyarrow_table().to_pylist()
    assert [r["drifted"] for r in rows] in ([[], ["b", "score"]], [["b", "score"], []])
    artifacts = [a.path for a in client(ws).list_artifacts(
        re.search(r"scoring run (\w+) ", out).group(1), "drift")]
    assert "drift/quantiles_over_runs.png" in artifacts
