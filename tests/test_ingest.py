"""A user's own files through ``mmgmm ingest`` and ``mmgmm evaluate``, by the CLI only.

Every expectation is checked against an independent reading of the same files (pandas /
pyarrow) and of the tables written (``deltalake``), and the per-kind report against
scikit-learn on those readings. The end-to-end case is a generated multi-file, mixed-format
data set: named columns in a CSV (ids as text), a glob of columns and an array column in
Parquet files (integer ids), ids missing in two modalities, labels in a CSV with a kind column.
"""

from __future__ import annotations

import io
import logging
import re
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import copy_empty_mlflow_store
from mlflow import MlflowClient
from sklearn.metrics import average_precision_score, roc_auc_score
from test_cli import Result, assert_user_error, cli, read_delta

from mmgmm_spark.app.cli import main

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_ROWS = 500
PROFILE = ["row_sum", "col_sum", "ink"]          # CSV, named columns (file also has others)
SUMMARY = ["stat_c", "stat_a", "stat_b"]         # Parquet, glob stat_* in file order
IMAGE_DIM = 4                                    # Parquet, array column "embedding"


@dataclass
class Files:
    root: Path
    config: Path
    profile: Path
    summary: Path
    image: Path
    labels: Path

    def table(self, name: str) -> Path:
        return self.root / "tables" / name

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'work').resolve() / 'mlflow.db'}"


def _planted(rng: np.random.Generator) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Three modalities of two groups; 3% outliers (far in the summary block) and 3%
    cross-modal rows (image of the other group). Returns the features and each row's kind."""
    group = rng.integers(0, 2, N_ROWS)
    kind = np.full(N_ROWS, "normal", dtype=object)
    kind[rng.choice(N_ROWS, 30, replace=False)] = "outlier"
    kind[rng.choice(np.flatnonzero(kind == "normal"), 15, replace=False)] = "cross_modal"
    features = {}
    for name, dim in (("profile", len(PROFILE)), ("summary", len(SUMMARY)), ("image", IMAGE_DIM)):
        centres = rng.normal(0, 5, (2, dim))
        own = np.where((kind == "cross_modal") & (name == "image"), 1 - group, group)
        features[name] = centres[own] + rng.normal(0, 1, (N_ROWS, dim))
    features["summary"][kind == "outlier"] += 20.0
    return features, kind


def _config(root: Path, name: str) -> Path:
    tables = root / "tables"
    config = {
        "work_dir": str(root / "work"),
        "spark": {"master": "local[2]"},
        "tracking": {"experiment": name, "registered_model": name, "alias": "champion"},
        "data": {"id_column": "id", "modalities": [
            {"name": "profile", "table": str(tables / "profile"), "covariance_type": "full"},
            {"name": "summary", "table": str(tables / "summary"), "covariance_type": "full"},
            {"name": "image", "table": str(tables / "image"), "covariance_type": "diag"}]},
        "model": {"n_components": 2, "max_iter": 50, "tol": 1.0e-4, "seed": 0},
        "scoring": {"contamination": 0.05, "output_table": str(tables / "scores")},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Files:
    root = tmp_path_factory.mktemp("own-data")
    rng = np.random.default_rng(20)
    features, kind = _planted(rng)
    ids = np.arange(1000, 1000 + N_ROWS)
    no_profile = rng.random(N_ROWS) < 0.04
    no_image = rng.random(N_ROWS) < 0.05
    profile = pd.DataFrame({"id": [f"{i:07d}" for i in ids], "note": "x"})   # text, zeros
    for j, column in enumerate(PROFILE):
        profile[column] = features["profile"][:, j]
    profile["unused"] = 1.0
    profile[~no_profile].to_csv(root / "profile.csv", index=False)
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()),
                             **{c: features["summary"][:, j] for j, c in enumerate(SUMMARY)},
                             "other": np.zeros(N_ROWS)}), root / "summary.parquet")
    pq.write_table(pa.table({"id": pa.array(ids[~no_image], pa.int64()),
                             "embedding": pa.array(list(features["image"][~no_image]),
                                                   pa.list_(pa.float64()))}),
                   root / "image.parquet")
    pd.DataFrame({"id": ids, "is_anomaly": (kind != "normal").astype(int),
                  "kind": kind}).to_csv(root / "labels.csv", index=False)
    copy_empty_mlflow_store(root / "work", tmp_path_factory)
    return Files(root, _config(root, "own-data"), root / "profile.csv",
                 root / "summary.parquet", root / "image.parquet", root / "labels.csv")


def _modalities(files: Files) -> list[str]:
    return ["--modality", f"profile={files.profile}:{','.join(PROFILE)}",
            "--modality", f"summary={files.summary}:stat_*",
            "--modality", f"image={files.image}:embedding"]


def run(*argv: object) -> Result:
    """``mmgmm ARGV`` in-process, its output captured (for module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def ingested(spark, files: Files) -> str:
    result = run("ingest", "--config", files.config, "--id-type", "long",
                 *_modalities(files))
    assert result.code == 0, result.err
    return result.out


# ----------------------------------------------------------------------------- ingest
def test_ingest_named_glob_and_array_columns_match_the_files(files: Files, ingested: str
                                                             ) -> None:
    csv = pd.read_csv(files.profile, dtype={"id": str})
    parquet = pq.read_table(files.summary).to_pandas()
    image = pq.read_table(files.image).to_pandas()
    expected = {"profile": (csv["id"].astype(int), csv[PROFILE].to_numpy()),
                "summary": (parquet["id"], parquet[SUMMARY].to_numpy()),     # file order
                "image": (image["id"], np.stack(image["embedding"]))}
    for name, (ids, values) in expected.items():
        table = read_delta(files.table(name)).set_index("id")
        assert sorted(table.index) == sorted(ids)
        assert table.index.dtype == np.int64                               # --id-type long
        np.testing.assert_allclose(np.stack(table.loc[list(ids), "features"]), values)
        line = next(line for line in ingested.splitlines() if line.startswith(f"{name}:"))
        assert f"Delta table {files.table(name)}" in line
        assert f"{len(ids)} rows, dim {values.shape[1]}" in line


def test_id_type_from_config_and_mixed_ids_without_it(spark, files: Files, capsys,
                                                      tmp_path: Path) -> None:
    config = ["--config", files.config,
              *[a for i, n in enumerate(("profile", "summary", "image"))
                for a in ("--set", f"data.modalities.{i}.table={tmp_path / n}")]]
    mixed = cli(capsys, "ingest", *config, *_modalities(files))
    assert_user_error(mixed, "different types", "--id-type")
    assert not (tmp_path / "profile").exists()
    by_config = cli(capsys, "ingest", *config, "--set", "data.id_type=string",
                    *_modalities(files))
    assert by_config.code == 0, by_config.err
    ids = read_delta(tmp_path / "summary")["id"]
    assert sorted(ids) == sorted(str(i) for i in pq.read_table(files.summary)["id"].to_pylist())

    text_ids = tmp_path / "text-ids.csv"
    text_ids.write_text("id,row_sum,col_sum,ink\n17,1,2,3\nabc-9,4,5,6\n")
    bad = cli(capsys, "ingest", *config, "--id-type", "long",
              "--modality", f"profile={text_ids}:{','.join(PROFILE)}")
    assert_user_error(bad, str(text_ids), "'abc-9'", "column 'id'", "long", "--id-type string")


def _bad_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("id,row_sum,col_sum,ink,label\n" + "\n".join(rows) + "\n")
    return path


def test_bad_values_are_one_paragraph_at_ingest(spark, files: Files, capsys,
                                                tmp_path: Path) -> None:
    target = tmp_path / "never"
    config = ["--config", files.config, "--set", f"data.modalities.0.table={target}"]
    columns = ",".join(PROFILE)

    not_a_number = _bad_csv(tmp_path / "na.csv", ["a1,1,2,3,x", "a2,4,n/a,6,x", "a3,7,8,9,x"])
    assert_user_error(cli(capsys, "ingest", *config, "--modality",
                          f"profile={not_a_number}:{columns}"),
                      str(not_a_number), "column 'col_sum'", "'n/a'", "id 'a2'", "empty")

    scalar = _bad_csv(tmp_path / "scalar.csv", ["a1,1,2,3,x", "a2,4,5,6,x"])
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"profile={scalar}:ink"),
                      str(scalar), "column 'ink'", "not an array", ":ink,")

    partly = _bad_csv(tmp_path / "partly.csv", ["a1,1,2,3,x", "a2,4,,6,x", "a3,,,,x"])
    assert_user_error(cli(capsys, "ingest", *config, "--modality",
                          f"profile={partly}:{columns}"),
                      str(partly), "1 row(s)", "id 'a2'", "['col_sum']", "missing")

    nan_array = tmp_path / "nan.parquet"
    pq.write_table(pa.table({"id": ["a1", "a2"], "features": [[1.0, float("nan")],
                                                               [2.0, 3.0]]}), nan_array)
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"profile={nan_array}"),
                      str(nan_array), "id 'a1'", "'features'")

    bad_glob = cli(capsys, "ingest", *config, "--modality", f"profile={scalar}:pix_*")
    assert_user_error(bad_glob, str(scalar), "pix_*", "glob")
    missing = cli(capsys, "ingest", *config, "--modality", f"profile={scalar}:ink,nope")
    assert_user_error(missing, str(scalar), "'nope'")
    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_text("not parquet")
    assert_user_error(cli(capsys, "ingest", *config, "--modality", f"profile={not_parquet}"),
                      str(not_parquet))
    assert not target.exists()


def test_an_all_empty_row_is_a_missing_modality(spark, files: Files, capsys,
                                                tmp_path: Path) -> None:
    source = _bad_csv(tmp_path / "holes.csv", ["a1,1,2,3,x", "a2,,,,x", "a3,7,8,9,x"])
    table = tmp_path / "holes"
    result = cli(capsys, "ingest", "--config", files.config,
                 "--set", f"data.modalities.0.table={table}",
                 "--modality", f"profile={source}:{','.join(PROFILE)}")
    assert result.code == 0, result.err
    written = read_delta(table).set_index("id").sort_index()
    assert written.loc["a2", "features"] is None
    np.testing.assert_array_equal(written.loc["a3", "features"], [7.0, 8.0, 9.0])


def test_not_found_messages_name_the_commands(files: Files, capsys, tmp_path: Path) -> None:
    train = cli(capsys, "train", "--config", files.config,
                "--set", f"data.modalities.0.table={tmp_path / 'nothing'}")
    message = assert_user_error(train, "not found", "mmgmm ingest")
    assert "write_table" not in message
    evaluate = cli(capsys, "evaluate", "--config", files.config, "--labels", files.labels,
                   "--set", f"scoring.output_table={tmp_path / 'no-scores'}")
    assert_user_error(evaluate, "not found", "mmgmm score")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def scored(files: Files, ingested: str) -> tuple[pd.DataFrame, list[str]]:
    """The scores table after ``mmgmm train`` and ``mmgmm score``, and what train logged."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("mmgmm_spark")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)       # under pytest the root logger stays at WARNING
    try:
        for command in ("train", "score"):
            result = run(command, "--config", files.config)
            assert result.code == 0, result.err
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return read_delta(files.table("scores")), [r.getMessage() for r in records]


def test_training_log_is_short_and_reads_well(scored: tuple[pd.DataFrame, list[str]]) -> None:
    _, lines = scored
    fitting = [line for line in lines if line.startswith("Fitting on")]
    assert len(fitting) == 1 and "rows of training rows" not in fitting[0]
    assert re.match(r"Fitting on training rows \(hold-out excluded\) of profile=.*: \d+ rows ",
                    fitting[0]), fitting[0]
    iterations = [line for line in lines if line.startswith("EM iteration")]
    assert 2 <= len(iterations) <= 2 + 50 // 10 and "(last, " in iterations[-1]


def test_end_to_end_every_id_scored_once_and_per_kind_report(
        files: Files, scored: tuple[pd.DataFrame, list[str]], capsys) -> None:
    scored, _ = scored
    every_id = set(pd.read_csv(files.profile)["id"]) | set(
        pq.read_table(files.summary)["id"].to_pylist()) | set(
        pq.read_table(files.image)["id"].to_pylist())
    assert scored["id"].is_unique and set(scored["id"]) == every_id

    result = cli(capsys, "evaluate", "--config", files.config, "--labels", files.labels,
                 "--kind-column", "kind")
    assert result.code == 0, result.err
    # evaluate ranks by the calibrated score (comparable across missing modalities)
    labels = pd.read_csv(files.labels).merge(scored[["id", "calibrated_score"]], on="id")
    normal = labels["is_anomaly"] == 0
    report = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(
        r"^\s+(\w+)\s+\d+\s+([\d.]+)\s+([\d.]+)$", result.out, re.MULTILINE)}
    assert set(report) == {"outlier", "cross_modal"}
    for kind, (auroc, ap) in report.items():
        rows = labels[normal | (labels["kind"] == kind)]
        assert auroc == pytest.approx(roc_auc_score(rows["is_anomaly"],
                                                    rows["calibrated_score"]), abs=1e-4)
        assert ap == pytest.approx(average_precision_score(rows["is_anomaly"],
                                                           rows["calibrated_score"]), abs=1e-4)
    assert report["outlier"][0] > 0.9 and report["cross_modal"][0] > 0.9
    client = MlflowClient(tracking_uri=files.tracking_uri)
    logged = client.get_run(scored["scoring_run_id"].iloc[0]).data.metrics
    assert logged["eval_auroc/outlier"] == pytest.approx(report["outlier"][0], abs=1e-4)
    assert "eval_average_precision/cross_modal" in logged


def test_evaluate_labels_as_parquet_and_refused_columns(
        files: Files, scored: tuple[pd.DataFrame, list[str]], capsys, tmp_path: Path) -> None:
    scored, _ = scored
    labels = pd.read_csv(files.labels)
    as_parquet = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"id": labels["id"], "truth": labels["is_anomaly"].astype(bool)}),
                   as_parquet)
    from_csv = cli(capsys, "evaluate", "--config", files.config, "--labels", files.labels)
    from_parquet = cli(capsys, "evaluate", "--config", files.config, "--labels", as_parquet,
                       "--label-column", "truth")
    assert from_csv.code == from_parquet.code == 0, from_parquet.err
    auroc = [re.search(r"^auroc: ([\d.]+)$", r.out, re.MULTILINE).group(1)
             for r in (from_csv, from_parquet)]
    merged = labels.merge(scored[["id", "calibrated_score"]], on="id")
    assert float(auroc[0]) == float(auroc[1]) == pytest.approx(
        roc_auc_score(merged["is_anomaly"], merged["calibrated_score"]), abs=1e-5)

    text = cli(capsys, "evaluate", "--config", files.config, "--labels", files.labels,
               "--label-column", "kind")
    assert_user_error(text, "'kind'", "bool or 0/1", "'normal'", "--label-column")
    wrong = cli(capsys, "evaluate", "--config", files.config, "--labels", as_parquet)
    assert_user_error(wrong, str(as_parquet), "'is_anomaly'", "--label-column")
    no_kind = cli(capsys, "evaluate", "--config", files.config, "--labels", files.labels,
                  "--kind-column", "type")
    assert_user_error(no_kind, "'type'", "--kind-column")


@pytest.mark.parametrize("item, path, columns", [
    ("profile=p.csv", "p.csv", None), ("profile=p.csv:a,b", "p.csv", "a,b"),
    ("profile=s3://bucket/p.parquet", "s3://bucket/p.parquet", None),
    ("profile=s3://bucket/p.parquet:stat_*", "s3://bucket/p.parquet", "stat_*")])
def test_modality_argument_keeps_url_paths(item: str, path: str, columns: str | None) -> None:
    from mmgmm_spark.app.cli import parse_modality

    source = parse_modality(item, {"profile": "t"})
    assert (source.path, source.columns, source.table) == (path, columns, "t")
