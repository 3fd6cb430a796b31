"""A tracked fit against a real ``mlflow server`` over HTTP, read back with the REST client."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import generate
from mmgmm_spark.tracking import TrackingConfig, tracked_fit

pytestmark = pytest.mark.slow
MODALITIES = [Modality("a", 3, "full"), Modality("b", 2, "diag")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def server(tmp_path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed in finally)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not start: "
                                   + (tmp_path / "server.log").read_text()[-2000:])
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def test_fit_tracked_on_server_reads_back_over_rest(server, tmp_path):
    data = generate(400, tuple(MODALITIES), n_clusters=2, seed=2).features
    config = TrackingConfig(work_dir=str(tmp_path / "unused"), tracking_uri=server,
                            experiment="server-test", registered_model_name="served")
    fit = tracked_fit(MultimodalGaussianMixture(MODALITIES, 2, random_state=0), data,
                      contamination=0.05, config=config, table_versions={"a": 1, "b": 2})
    client = config.client()
    assert client.tracking_uri == server
    run = client.get_run(fit.run_id)
    assert run.data.params["table_version.b"] == "2" and run.data.params["n_components"] == "2"
    history = client.get_metric_history(fit.run_id, "mean_log_likelihood")
    np.testing.assert_allclose([m.value for m in sorted(history, key=lambda m: m.step)],
                               fit.detector.model.lower_bounds_, rtol=1e-12)
    assert run.data.metrics["bic"] == pytest.approx(fit.detector.model.bic(data), rel=1e-10)
    version = client.get_model_version_by_alias("served", "champion")
    assert str(version.version) == fit.model_version == "1"
    assert {a.path for a in client.list_artifacts(fit.run_id, "plots")} >= {
        "plots/convergence.png", "plots/score_histogram.png"}
    assert not (tmp_path / "unused").exists()        # nothing written to the local default
    assert any((tmp_path / "artifacts").rglob("arrays.npz"))   # uploaded through the server
