"""Incremental scoring through ``mmgmm score --incremental``, on tables changed by deltalake.

The reference for the appended scores is a full re-score of the same tables (``mmgmm score``);
the expected ids are the ones this test changed; the output table is read with deltalake.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from deltalake import DeltaTable, write_deltalake
from mlflow import MlflowClient

from mmgmm_spark.app.cli import main

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_ROWS, DIMS = 600, {"a": 3, "b": 2}


def _table(ids, x) -> pa.Table:
    return pa.table({"id": pa.array(list(ids), pa.string()),
                     "features": pa.array(list(x), pa.list_(pa.float64()))})


@pytest.fixture(scope="module")
def ws(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    rng = np.random.default_rng(0)
    ids = np.array([f"e{i:04d}" for i in range(N_ROWS)], dtype=object)
    for name, dim in DIMS.items():
        keep = ids if name == "a" else ids[np.arange(N_ROWS) % 10 != 3]
        write_deltalake(str(root / name), _table(keep, rng.normal(0, 1, (len(keep), dim))))
    config = {
        "work_dir": str(root / "work"),
        "tracking": {"experiment": "incremental-tests", "registered_model": "inc"},
        "data": {"modalities": [{"name": n, "table": str(root / n)} for n in DIMS]},
        "model": {"n_components": 2, "max_iter": 30, "seed": 0},
        "scoring": {"output_table": str(root / "scores")},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.setenv("MPLBACKEND", "Agg")
        assert main(["train", "--config", str(root / "config.yaml")]) == 0
        yield root


def score(ws: Path, capsys, *args: str) -> str:
    code = main(["score", "--config", str(ws / "config.yaml"), *args])
    out = capsys.readouterr().out
    assert code == 0, out
    return out


def scores(ws: Path) -> pd.DataFrame:
    return DeltaTable(str(ws / "scores")).to_pyarrow_table().to_pandas()


def change(ws: Path, name: str, changed: list[str], shift: float = 1.0) -> None:
    """Rewrite modality ``name`` with ``changed`` ids' features shifted (deltalake writes)."""
    table = DeltaTable(str(ws / name)).to_pyarrow_table().to_pandas()
    rows = table["id"].isin(changed)
    table.loc[rows, "features"] = table.loc[rows, "features"].map(lambda f: list(f + shift))
    write_deltalake(str(ws / name), _table(table["id"], table["features"]), mode="overwrite")


def test_incremental_scores_exactly_the_changed_entities(ws: Path, capsys, monkeypatch):
    first = score(ws, capsys, "--incremental")
    assert "scored every entity" in first                  # no earlier run: a full run
    assert len(scores(ws)) == N_ROWS

    changed = [f"e{i:04d}" for i in range(0, 400, 2)]     # 200 entities, modality b only
    change(ws, "b", changed)
    before = DeltaTable(str(ws / "scores")).version()

    # a failed run leaves the table and the recorded versions as they were
    import mmgmm_spark.tracking.scoring as scoring

    def fail(*args, **kwargs):
        raise RuntimeError("executor lost")

    monkeypatch.setattr(scoring, "score_to_delta", fail)
    with pytest.raises(RuntimeError):
        main(["score", "--config", str(ws / "config.yaml"), "--incremental"])
    monkeypatch.undo()
    assert DeltaTable(str(ws / "scores")).version() == before

    out = score(ws, capsys, "--incremental")
    assert re.search(r": 200 entities changed in b \(added files\); 200 scored, 0 deleted", out)
    table = scores(ws)
    run = re.search(r"scoring run (\w+),", out).group(1)
    appended = table[table["scoring_run_id"] == run]
    # ids without modality b among the changed were not in table b: not changed
    in_b = {f"e{i:04d}" for i in range(0, 400, 2) if i % 10 != 3}
    assert set(appended["id"]) == in_b and len(appended) == len(in_b)

    assert "nothing to score" in score(ws, capsys, "--incremental")
    assert DeltaTable(str(ws / "scores")).version() == before + 1

    full = score(ws, capsys)                              # the reference: a full re-score
    full_run = re.search(r"scoring run (\w+),", full).group(1)
    table = scores(ws)
    reference = table[table["scoring_run_id"] == full_run].set_index("id")
    got = appended.set_index("id")
    for column in ("anomaly_score", "a_log_likelihood", "b_log_likelihood"):
        np.testing.assert_allclose(got[column], reference.loc[got.index, column], rtol=0,
                                   atol=1e-9)


def test_entity_deleted_upstream_is_counted_and_keeps_its_score(ws: Path, capsys):
    score(ws, capsys, "--incremental")
    gone = "e0005"
    for name in DIMS:
        DeltaTable(str(ws / name)).delete(f"id = '{gone}'")
    out = score(ws, capsys, "--set", "scoring.mode=incremental")
    assert "1 entities changed" in out and "0 scored, 1 deleted upstream" in out
    assert gone in set(scores(ws)["id"])                  # its last score is kept
    uri = f"sqlite:///{ws / 'work' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs(client.get_experiment_by_name("incremental-tests").experiment_id,
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.data.metrics["n_deleted"] == 1 and run.data.params["scoring.mode"] == \
        "incremental"
