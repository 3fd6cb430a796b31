"""Safety: artefacts are never unpickled, tampered checkpoints are rejected, no SQL is built
from user values, and no secrets sit in config files or leak into logs and runs."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.io.checkpoints import (
    FILENAME,
    Checkpointer,
    CheckpointError,
    _digest,
    load_checkpoint,
)
from mmgmm_spark.io.model_files import ModelFormatError
from mmgmm_spark.models.detector import AnomalyDetector
from mmgmm_spark.storage import StorageError, resolve_table

ROOT = Path(__file__).resolve().parents[1]
MODALITIES = [Modality("image", 4, "full"), Modality("text", 3, "diag")]
SENTINEL = "unpickled-sentinel"


class Malicious:
    """Unpickling this would create a file: proof that something was unpickled."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def data():
    return generate(600, tuple(MODALITIES), n_clusters=2, seed=5).features


def model() -> MultimodalGaussianMixture:
    return MultimodalGaussianMixture(MODALITIES, 2, max_iter=3, tol=0.0, random_state=0)


@pytest.fixture()
def checkpoint(tmp_path, data) -> Path:
    fitted = model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted.fit(data, checkpointer=Checkpointer(str(tmp_path), fitted),
                             on_iteration=None)
    return tmp_path / FILENAME


def rewrite(path: Path, change, fix_digest: bool) -> None:
    """Apply ``change(arrays, document)``; optionally recompute the digest (a careful forger)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    document = json.loads(arrays.pop("document").tobytes())
    change(arrays, document)
    if fix_digest:
        document["digest"] = _digest(document, arrays)
    arrays["document"] = np.frombuffer(json.dumps(document).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def _scale_weight(arrays, document):
    arrays["cur_weights"] = arrays["cur_weights"] * 1.0000001


def _reshape_means(arrays, document):
    arrays["cur_m0_means"] = arrays["cur_m0_means"][:, :3].copy()


def _change_covariance(arrays, document):
    arrays["cur_m1_covariances"] = arrays["cur_m1_covariances"] * 2.0


def _extra_array(arrays, document):
    arrays["payload"] = np.zeros(3)


def _other_model(arrays, document):
    document["hyperparameters"]["n_components"] = 2
    document["modalities"][1]["covariance_type"] = "spherical"


def _long_history(arrays, document):
    document["current"]["lower_bounds"] = [0.0] * 50


@pytest.mark.parametrize(("change", "fix_digest", "message"), [
    (_scale_weight, False, "integrity check"),
    (_reshape_means, True, r"'cur_m0_means' must be finite float64 of shape \(2, 4\)"),
    (_change_covariance, True, "precisions do not match its covariances"),
    (_extra_array, True, "unexpected arrays"),
    (_other_model, True, "belongs to another fit"),
    (_long_history, True, "invalid lower-bound history"),
], ids=["edited-values", "bad-shape", "inconsistent-precisions", "extra-array", "other-model",
        "history"])
def test_tampered_checkpoint_is_rejected(checkpoint, change, fix_digest, message):
    assert load_checkpoint(str(checkpoint), model()).iterations == 3
    rewrite(checkpoint, change, fix_digest)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(str(checkpoint), model())


def test_checkpoint_holding_a_pickle_is_rejected_unopened(checkpoint, tmp_path):
    sentinel = tmp_path / SENTINEL
    with np.load(checkpoint, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["cur_weights"] = np.array([Malicious(str(sentinel))], dtype=object)
    np.savez(checkpoint, **arrays)
    with pytest.raises(CheckpointError, match="not a plain-array file"):
        load_checkpoint(str(checkpoint), model())
    assert not sentinel.exists()


def test_truncated_checkpoint_is_rejected(checkpoint):
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(CheckpointError):
        load_checkpoint(str(checkpoint), model())


def test_model_artefact_holding_a_pickle_is_rejected_unopened(tmp_path, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = AnomalyDetector.fit(model(), data, contamination=0.05)
    detector.save(str(tmp_path / "detector"))
    sentinel = tmp_path / SENTINEL
    with np.load(tmp_path / "detector" / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["weights"] = np.array([Malicious(str(sentinel))], dtype=object)
    np.savez(tmp_path / "detector" / "arrays.npz", **arrays)
    with pytest.raises(ModelFormatError):
        AnomalyDetector.load(str(tmp_path / "detector"))
    assert not sentinel.exists()


def np_load_calls(text: str) -> list[str]:
    """The full text of every ``np.load(...)`` call (parentheses balanced)."""
    calls = []
    for match in re.finditer(r"np\.load\(", text):
        depth, end = 0, match.start()
        for end in range(match.end() - 1, len(text)):
            depth += {"(": 1, ")": -1}.get(text[end], 0)
            if depth == 0:
                break
        calls.append(text[match.start():end + 1])
    return calls


def test_no_unpickling_anywhere_in_the_package():
    """Every np.load says allow_pickle=False; no pickle/cloudpickle/joblib loading."""
    for path in (ROOT / "mmgmm_spark").rglob("*.py"):
        text = path.read_text()
        for call in np_load_calls(text):
            assert "allow_pickle=False" in call, f"{path}: {call}"
        assert not re.search(r"\b(pickle|cloudpickle|joblib|dill)\.loads?\(", text), path
        assert "allow_pickle=True" not in text, path


# ------------------------------------------------------------------------------- SQL audit
SQL_FROM_STRINGS = re.compile(
    r"\.sql\(|\bexpr\(|selectExpr\(|\.(where|filter)\(\s*f?[\"']")


def test_no_sql_is_built_from_strings():
    """Predicates are Column expressions; nothing goes through the SQL parser from a string
    (the only SQL text is delta-spark's replaceWhere option and its ``describe``, from
    validated parts, marked ``# validated SQL text``)."""
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in (ROOT / "mmgmm_spark").rglob("*.py")
                 for n, line in enumerate(p.read_text().splitlines(), 1)
                 if SQL_FROM_STRINGS.search(line) and not line.endswith("# validated SQL text")]
    marked = [f"{p.relative_to(ROOT)}" for p in (ROOT / "mmgmm_spark").rglob("*.py")
              for line in p.read_text().splitlines() if line.endswith("# validated SQL text")]
    assert marked == ["mmgmm_spark/storage/engines/delta_spark.py"]
    assert offenders == []


@pytest.mark.parametrize("name", ["main.x; DROP TABLE y", "a`b", "main.s.t.u", "x OR 1=1",
                                  "t--comment"])
def test_table_names_are_validated(name):
    with pytest.raises(StorageError):
        resolve_table(name)


def test_catalog_names_are_quoted_and_replace_where_literals_escaped():
    from mmgmm_spark.storage.engines.delta_spark import describe, replace_where_sql, sql_name

    assert resolve_table("main.features.image").catalog_name == "`main`.`features`.`image`"
    assert sql_name(resolve_table("/tmp/a`b; DROP")) == "delta.`file:///tmp/a``b; DROP`"
    with pytest.raises(ValueError, match="unknown command"):
        describe(None, "HISTORY x; DROP TABLE y", resolve_table("/tmp/t"))
    assert replace_where_sql({"run": "x' OR '1'='1", "n": 3}) == (
        r"`run` = 'x\' OR \'1\'=\'1' AND `n` = 3")
    with pytest.raises(StorageError, match="not a plain column name"):
        replace_where_sql({"run = 'a' OR 1": "x"})


# --------------------------------------------------------------------------------- secrets
TOKEN_PATTERNS = {
    "Databricks token": r"dapi[0-9a-f]{32}",
    "GitHub token": r"gh[pousr]_[A-Za-z0-9]{36}",
    "AWS access key": r"\bAKIA[0-9A-Z]{16}\b",
    "Slack token": r"xox[baprs]-[A-Za-z0-9-]{10,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "JWT": r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.",
    "credential in URL": r"://[^/\s:@]+:[^/\s@]+@",
    "assigned secret": r"(?i)\b(password|passwd|secret|token|api[_-]?key|access[_-]?key)\b"
                       r"\s*[:=]\s*[\"']?(?!\$\{|\{\{|null\b|none\b)[A-Za-z0-9/+_.-]{8,}",
}


def secrets_in(text: str) -> list[str]:
    return [f"{kind}: {m.group(0)[:12]}..." for kind, pattern in TOKEN_PATTERNS.items()
            for m in re.finditer(pattern, text)]


def test_the_patterns_find_planted_secrets():
    planted = ("token: dapi" + "0123456789abcdef" * 2 + "\nurl: https://user:hunter22@host\n"
               "password = 'correcthorsebattery'")
    assert len(secrets_in(planted)) >= 3


def test_no_secrets_in_config_and_deployment_files():
    files = [ROOT / "databricks.yml", *(ROOT / "conf").rglob("*"),
             *(ROOT / "resources").rglob("*")]
    found = {str(f.relative_to(ROOT)): secrets_in(f.read_text()) for f in files if f.is_file()}
    assert {f: s for f, s in found.items() if s} == {}


def test_a_fit_does_not_leak_credentials_from_the_environment(tmp_path, data, monkeypatch,
                                                              caplog):
    """Credentials in the environment appear in no log line, run parameter or tag."""
    from mmgmm_spark.tracking import TrackingConfig, tracked_fit

    fake = {"DATABRICKS_TOKEN": "dapi" + "feedc0de" * 4,
            "MLFLOW_TRACKING_PASSWORD": "s3cr3t-pa55word-value",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    for key, value in fake.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrackingConfig(work_dir=str(tmp_path), experiment="safety",
                            registered_model_name="safety-detector")
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = tracked_fit(model(), data, contamination=0.05, config=config,
                          checkpoint_dir=str(tmp_path / "checkpoints"))
    logged = config.client().get_run(run.run_id).data
    texts = [caplog.text, json.dumps(logged.params), json.dumps(logged.tags)]
    for text in texts:
        assert not any(value in text for value in fake.values())
        assert secrets_in(text) == []
    assert os.environ["DATABRICKS_TOKEN"] == fake["DATABRICKS_TOKEN"]
