"""The one place that builds a SparkSession.

Everything else receives ``spark`` (or DataFrames). Defaults suit an embedded local run; on a
cluster or Databricks the existing session is returned unchanged (``getOrCreate``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from pyspark.sql import SparkSession

LOCAL_DEFAULTS = {
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.enabled": "false",
    "spark.driver.memory": "4g",
    "spark.executorEnv.OMP_NUM_THREADS": "1",
    "spark.sql.session.timeZone": "UTC",
    # The JVM only moves data here (numpy does the maths), and on a 2-core machine C2's
    # compilation of Spark's code paths competes with the Python workers for the CPU for
    # minutes: the quick C1 compiler alone halves the JVM's CPU time per EM pass.
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    # Bound what the driver keeps about finished jobs (every EM iteration is a job), so a
    # long-lived session (notebooks, soak runs) does not grow with the number of fits.
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.sql.ui.retainedExecutions": "50",
}


def build_spark(master: str | None = "local[2]", app_name: str = "mmgmm-spark",
                conf: Mapping[str, str] | None = None, remote: str | None = None) -> SparkSession:
    """Get or create the SparkSession.

    Args:
        master: e.g. ``local[2]``, ``local-cluster[2,1,1024]``, ``spark://host:7077``; None
            keeps whatever the environment (spark-submit, Databricks) configured.
        app_name: the application name shown in the Spark UI.
        conf: extra Spark properties; they override the local defaults.
        remote: a Spark Connect URL (``sc://host:15002``, or ``local`` to start a local
            Connect server); the session then has no RDD API.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run the interpreter that has this project installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    settings: dict[str, str] = {}
    if remote is not None:
        builder = builder.remote(remote)
    else:
        if master is not None:
            builder = builder.master(master)
        if (master or "").startswith("local"):
            settings.update(LOCAL_DEFAULTS)
        settings["spark.pyspark.python"] = os.environ["PYSPARK_PYTHON"]
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def has_rdd_api(spark: SparkSession) -> bool:
    """False under Spark Connect (Databricks Standard/Serverless), where ``df.rdd`` is absent."""
    return not type(spark).__module__.startswith("pyspark.sql.connect")
