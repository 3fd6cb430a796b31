"""README's spark-submit commands, as written, on a standalone cluster started here (a master
and two 1-core workers on loopback), against the same jobs run locally in this process.

The README block runs in a copy of the repository (its ``conf/cluster.yaml`` pointed at this
test's tables), so the package reaches the executors the way README ships it. While the
scoring job runs, one worker (with its executor and Python workers) is killed: the scores
table must still hold every entity exactly once, equal to the local run's.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml
from deltalake import DeltaTable

from tests.conftest import copy_empty_mlflow_store
from tests.spark_servers import (
    HOST,
    JIT_OPTIONS,
    ROOT,
    free_port,
    registered_champion,
    server_env,
    start_cluster,
)

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROWS = 3_000
MARKER = "<!-- cluster-jobs -->"
SCORE_COLUMNS = ["log_likelihood", "anomaly_score", "calibrated_score", "image_log_likelihood",
                 "text_log_likelihood", "sensor_log_likelihood"]
SMALL_CLUSTER_CONF = {
    "spark.sql.shuffle.partitions": "4",
    # Delta rebuilds a snapshot's state (every version-pinned read) in 50 tasks by default:
    # on two 1-core executors and tables of 3,000 rows those jobs took most of the run.
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.executor.extraJavaOptions": JIT_OPTIONS,
}
"""The test's settings for tiny tables on a 2-core machine (the jobs' numbers do not change)."""
COPY_IGNORE = shutil.ignore_patterns(".git", "work", "dist", "build", "__pycache__", "*.egg-info",
                                     ".pytest_cache", ".ruff_cache", "mlruns", "spark-warehouse")


def readme_cluster_block() -> str:
    """The bash block that follows README's ``<!-- cluster-jobs -->`` marker."""
    readme = (ROOT / "README.md").read_text()
    body = readme[readme.index(MARKER):].split("```bash\n", 1)[1].split("```", 1)[0]
    return textwrap.dedent(body)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """A standalone master and two workers (1 core, 1g each) on loopback."""
    started = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield started
    started.stop()


def _cluster_config(project: Path, work_dir: Path, ui_port: int) -> Path:
    """The copy's ``conf/cluster.yaml`` with this test's work dir and a small model."""
    path = project / "conf" / "cluster.yaml"
    document = yaml.safe_load(path.read_text())
    document["work_dir"] = str(work_dir)
    document["model"].update(n_components=3, max_iter=30)
    document["spark"]["conf"] = {"spark.ui.port": str(ui_port), **SMALL_CLUSTER_CONF}
    path.write_text(yaml.safe_dump(document))
    return path


def _write_tables(spark, config_path: Path, work_dir: Path) -> None:
    from mmgmm_spark.app.config import load_config
    from mmgmm_spark.app.demo import write_demo_tables

    config = load_config(config_path, [f"work_dir={work_dir}", "storage.engine=delta-rs"])
    write_demo_tables(spark, config, str(work_dir / "tables" / "labels"), n_rows=ROWS, seed=0)


def _active_stages(ui_port: int) -> list[dict]:
    """Active stages of the application whose driver UI is on ``ui_port`` ([] if none)."""
    base = f"http://{HOST}:{ui_port}/api/v1/applications"
    try:
        with urllib.request.urlopen(base, timeout=5) as r:
            app = json.loads(r.read())[0]["id"]
        with urllib.request.urlopen(f"{base}/{app}/stages?status=active", timeout=5) as r:
            return json.loads(r.read())
    except (OSError, IndexError, ValueError):
        return []


def _kill_worker_when_scoring(cluster, ui_port: int, done: threading.Event,
                              killed: list[str]) -> None:
    """Once the second application (the scoring job) runs tasks, SIGKILL worker 0's process
    group (the worker, its executor and Python workers)."""
    while not done.is_set():
        scoring = len(cluster.state().get("completedapps", [])) >= 1
        stages = _active_stages(ui_port) if scoring else []
        if any(s["numActiveTasks"] > 0 for s in stages):
            cluster.workers[0].stop(signal.SIGKILL)
            killed.append(stages[0]["name"])
            return
        time.sleep(0.2)


def _registered(work_dir: Path):
    return registered_champion(work_dir, "mmgmm-entities")


def _scores(work_dir: Path):
    return (DeltaTable(str(work_dir / "tables" / "scores")).to_pandas()
            .sort_values("id").reset_index(drop=True))


def test_readme_spark_submit_on_a_standalone_cluster(spark, cluster, tmp_path, tmp_path_factory):
    """train + score as README writes them: the local fit's parameters (1e-9) and scores,
    every entity scored exactly once although a worker was killed while scoring."""
    from mmgmm_spark.app import pipeline
    from mmgmm_spark.app.config import load_config

    project, ui_port = tmp_path / "project", free_port()
    shutil.copytree(ROOT, project, ignore=COPY_IGNORE, symlinks=True)
    remote_dir, local_dir = tmp_path / "on-cluster", tmp_path / "local"
    config_path = _cluster_config(project, remote_dir, ui_port)
    for work_dir in (remote_dir, local_dir):
        _write_tables(spark, config_path, work_dir)
        copy_empty_mlflow_store(work_dir, tmp_path_factory)

    done, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_worker_when_scoring,
                               args=(cluster, ui_port, done, killed), daemon=True)
    watcher.start()
    # the driver is spark-submit's JVM (client mode): its options come from the environment
    env = {**server_env(checkout=False), "SPARK_MASTER": cluster.url,
           "SPARK_SUBMIT_OPTS": JIT_OPTIONS}
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_cluster_block()],
                                cwd=project, env=env, capture_output=True, text=True,
                                timeout=2400)
    finally:
        done.set()
        watcher.join()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    assert killed, "the scoring job ended before a worker could be killed while it ran tasks"

    local = load_config(config_path, [f"work_dir={local_dir}", "storage.engine=delta-rs"])
    pipeline.train(spark, local)
    pipeline.score(spark, local)
    on_cluster, reference = _registered(remote_dir), _registered(local_dir)
    np.testing.assert_allclose(on_cluster.model.weights_, reference.model.weights_, rtol=1e-9)
    for name in reference.model.means_:
        for attribute in ("means_", "covariances_"):
            np.testing.assert_allclose(getattr(on_cluster.model, attribute)[name],
                                       getattr(reference.model, attribute)[name],
                                       rtol=1e-9, atol=1e-9)
    scored, expected = _scores(remote_dir), _scores(local_dir)
    assert scored["id"].is_unique and len(scored) == ROWS
    assert scored["id"].tolist() == expected["id"].tolist()
    for column in SCORE_COLUMNS:
        np.testing.assert_allclose(scored[column], expected[column], rtol=1e-9, atol=1e-9)
    assert scored["is_anomaly"].tolist() == expected["is_anomaly"].tolist()
    history = DeltaTable(str(remote_dir / "tables" / "scores")).history()
    assert len(history) == 1 and "Delta-Lake" in history[0].get("engineInfo", "")
