"""The one place that builds a SparkSession, and the Delta Lake jars it may need.

Everything else receives ``spark`` (or DataFrames). Defaults suit an embedded local run; on a
cluster or Databricks the existing session is returned unchanged (``getOrCreate``).

Delta Lake's Spark connector is a Maven artifact whose name follows the installed versions,
exactly as ``delta.configure_spark_with_delta_pip`` derives it:
``io.delta:delta-spark_<pyspark major.minor>_2.13:<delta-spark version>`` (pyspark 4.2 and
delta-spark 4.4.1: ``io.delta:delta-spark_4.2_2.13:4.4.1``); :func:`delta_package` returns it
(``python -c "from mmgmm_spark.spark.session import delta_package; print(delta_package())"``
prints it for ``spark-submit --packages``). Spark's own resolver (Ivy) downloads it from Maven
Central at the first start, reading the local Maven repository (``~/.m2``) first;
:func:`prefetch_delta_jars` (``make install``) runs that resolver once, so later starts are
offline, and repairs with Maven (when ``mvn`` is installed) the jars it finds missing in
``~/.m2``. When Maven Central has not (yet) published the jar of
the installed Python release, the newest published patch release of the same major.minor is
used instead (the Python package is a thin py4j wrapper over the jar's API).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import pyspark
from pyspark.sql import SparkSession

from mmgmm_spark.storage.engines.delta_spark import DELTA_CATALOG, DELTA_EXTENSION

log = logging.getLogger(__name__)

SCALA_VERSION = "2.13"
DELTA_GROUP = "io.delta"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
DELTA_CONF = {
    "spark.sql.extensions": DELTA_EXTENSION,
    "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
}
"""Session settings that make ``format("delta")`` and catalog Delta tables work."""
DELTA_LOCAL_DEFAULTS = {
    # Delta rebuilds a snapshot's state (overwrite, replaceWhere, time travel) in 50 tasks by
    # default: on local[2] and small tables, 2 tasks take 2 s where 50 take 10-15 s.
    "spark.databricks.delta.snapshotPartitions": "2",
}

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
    # minutes: the quick C1 compiler alone halves the JVM's CPU time per EM pass. C1 alone
    # reserves a 48 MB code cache, which Delta Lake's connector fills (the JVM then stops
    # compiling and Delta's commits take 10-20 s instead of 1-2 s): reserve more.
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
    "spark.executor.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=256m",
    # Bound what the driver keeps about finished jobs (every EM iteration is a job), so a
    # long-lived session (notebooks, soak runs) does not grow with the number of fits.
    "spark.ui.retainedJobs": "200",
    "spark.ui.retainedStages": "200",
    "spark.sql.ui.retainedExecutions": "50",
}


def build_spark(master: str | None = "local[2]", app_name: str = "mmgmm-spark",
                conf: Mapping[str, str] | None = None, remote: str | None = None,
                delta: bool = False) -> SparkSession:
    """Get or create the SparkSession.

    Args:
        master: e.g. ``local[2]``, ``local-cluster[2,1,1024]``, ``spark://host:7077``; None
            keeps whatever the environment (spark-submit, Databricks) configured.
        app_name: the application name shown in the Spark UI.
        conf: extra Spark properties; they override the local defaults.
        remote: a Spark Connect URL (``sc://host:15002``), or ``local`` / ``local[N]`` to
            start a Connect server in this process (``local`` runs it on ``master`` when that
            is a ``local[...]`` master); the session then has no RDD API. A remote server keeps
            its own static settings (and Delta's connector, or not): only ``conf`` is sent.
        delta: add Delta Lake's Spark connector (:func:`delta_package` in
            ``spark.jars.packages``, its extension and catalog), so ``storage.engine`` ``auto``
            picks ``delta-spark``. Only takes effect when this call starts Spark.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers must run the interpreter that has this project installed.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if remote is not None:
        remote = master if remote == "local" and (master or "").startswith("local[") else remote
        builder = builder.remote(remote)
    elif master is not None:
        builder = builder.master(master)
    starts_jvm = remote is None or remote.startswith("local")
    local = (remote or master or "").startswith("local")
    settings = jvm_settings(local, delta) if starts_jvm else {}
    settings.update(delta_settings(conf or {}) if delta and starts_jvm else conf or {})
    if remote is not None and starts_jvm:
        return _local_connect_session(builder, settings)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _local_connect_session(builder: SparkSession.Builder, settings: dict[str, str]
                           ) -> SparkSession:
    """A Spark Connect session on a server pyspark starts in this process with ``settings``.

    pyspark reads the server's start-up settings from ``PYSPARK_REMOTE_INIT_CONF_*``; settings
    given to the builder would also be sent to the Connect session, which refuses every static
    one (driver memory, JVM options...) with a warning.
    """
    os.environ["PYSPARK_REMOTE_INIT_CONF_LEN"] = "1"
    os.environ["PYSPARK_REMOTE_INIT_CONF_0"] = json.dumps(settings)
    try:
        return builder.getOrCreate()
    finally:
        del os.environ["PYSPARK_REMOTE_INIT_CONF_LEN"], os.environ["PYSPARK_REMOTE_INIT_CONF_0"]


def jvm_settings(local: bool, delta: bool) -> dict[str, str]:
    """Settings of a Spark JVM that this process starts (a classic session, or a local Spark
    Connect server): :data:`LOCAL_DEFAULTS` (and :data:`DELTA_LOCAL_DEFAULTS`) on a local
    master, and the Python workers' interpreter."""
    settings = {**LOCAL_DEFAULTS, **(DELTA_LOCAL_DEFAULTS if delta else {})} if local else {}
    settings["spark.pyspark.python"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
    return settings


def has_rdd_api(spark: SparkSession) -> bool:
    """False under Spark Connect (Databricks Standard/Serverless), where ``df.rdd`` is absent."""
    return not type(spark).__module__.startswith("pyspark.sql.connect")


def delta_settings(conf: Mapping[str, str]) -> dict[str, str]:
    """``conf`` plus Delta's extension, catalog and package (added to any other packages)."""
    settings = {**DELTA_CONF, **conf}
    packages = [p for p in conf.get("spark.jars.packages", "").split(",") if p.strip()]
    if not any(p.startswith(f"{DELTA_GROUP}:delta-spark_") for p in packages):
        packages.insert(0, delta_package())
    settings["spark.jars.packages"] = ",".join(packages)
    return settings


def delta_artifact() -> str:
    """``delta-spark_<pyspark major.minor>_<scala>``, as ``configure_spark_with_delta_pip``."""
    spark_major_minor = ".".join(pyspark.__version__.split(".")[:2])
    return f"delta-spark_{spark_major_minor}_{SCALA_VERSION}"


def delta_package() -> str:
    """The Maven coordinate of Delta's Spark connector for the installed versions.

    ``io.delta:delta-spark_4.2_2.13:4.4.1`` for pyspark 4.2 and delta-spark 4.4.1; the jar
    version is :func:`delta_jar_version`.
    """
    return f"{DELTA_GROUP}:{delta_artifact()}:{delta_jar_version()}"


def _numeric(version: str) -> tuple[int, ...] | None:
    return tuple(map(int, version.split("."))) if re.fullmatch(r"\d+(\.\d+)*", version) else None


def local_delta_versions() -> list[str]:
    """Versions of :func:`delta_artifact` in the local Maven repository and Spark's Ivy cache."""
    artifact = delta_artifact()
    m2 = Path.home() / ".m2" / "repository" / "io" / "delta" / artifact
    found = {d.name for d in m2.glob("*") if (d / f"{artifact}-{d.name}.jar").is_file()}
    ivy = Path.home() / ".ivy2.5.2" / "cache" / DELTA_GROUP / artifact / "jars"
    found |= {j.name[len(artifact) + 1:-len(".jar")] for j in ivy.glob(f"{artifact}-*.jar")}
    return sorted(found, key=lambda v: _numeric(v) or ())


def delta_jar_version(available: list[str] | None = None) -> str:
    """The installed delta-spark version, unless its jar is not available but an older patch
    release of the same major.minor is (in ``available``, default :func:`local_delta_versions`):
    then the newest such release (Maven Central may publish a patch jar after PyPI)."""
    installed = importlib.metadata.version("delta_spark")
    available = local_delta_versions() if available is None else available
    wanted = _numeric(installed)
    if installed in available or wanted is None:
        return installed
    same_minor = [v for v in available
                  if (n := _numeric(v)) is not None and n[:2] == wanted[:2] and n <= wanted]
    if not same_minor:
        return installed
    chosen = max(same_minor, key=_numeric)
    log.warning("Delta Lake jar %s is not available; using %s (same major.minor) with the "
                "installed delta-spark %s", installed, chosen, installed)
    return chosen


def published_delta_versions(timeout: float = 20.0) -> list[str]:
    """Versions of :func:`delta_artifact` on Maven Central (its ``maven-metadata.xml``)."""
    url = f"{MAVEN_CENTRAL}/io/delta/{delta_artifact()}/maven-metadata.xml"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    return re.findall(r"<version>([^<]+)</version>", text)


def prefetch_delta_jars() -> str:
    """Put Delta's Spark connector (and its dependencies) where Spark's resolver finds them
    offline; return a one-line report. Best effort: never raises (``make install`` step).

    Spark's own resolver downloads into its Ivy cache (so a user with internet does not need
    Maven); see :func:`_fetch`.
    """
    try:
        installed, local = importlib.metadata.version("delta_spark"), delta_jar_version()
        versions = [local] if local in local_delta_versions() else _versions_to_try(installed)
        for version in versions:
            coordinate = f"{DELTA_GROUP}:{delta_artifact()}:{version}"
            if _fetch(coordinate):
                return f"Delta jars fetched: {coordinate}"
        return (f"Delta jars for delta-spark {installed} could not be fetched; the delta-spark "
                "engine's tests will be skipped (Spark retries the download at start-up).")
    except Exception as exc:  # a failed prefetch must not fail the installation
        return f"Delta jar prefetch failed ({exc}); Spark will try to download them at start-up."


def _versions_to_try(installed: str) -> list[str]:
    """The installed version, then (if Maven Central lacks it) its newest published patch."""
    try:
        published = published_delta_versions()
    except OSError:
        return [installed]
    if installed in published:
        return [installed]
    fallback = delta_jar_version(published)
    return [installed] if fallback == installed else [fallback]


def _fetch(coordinate: str) -> bool:
    """Fetch ``coordinate`` and its dependencies; True once Spark's own resolver (Ivy) resolves
    it (it downloads what ``~/.m2`` and its cache lack from Maven Central).

    Maven and Ivy mediate version conflicts differently (Maven: nearest; Ivy: latest), so a
    version Ivy picks may have only its POM in ``~/.m2`` (left by an earlier ``mvn`` run for
    mediation); Ivy then trusts that repository and fails on the missing jar ("download failed:
    g#a;v!a.jar"). With ``mvn`` on PATH each such jar is fetched, without its dependencies,
    and Ivy is asked again.
    """
    output = ""
    for _ in range(MAX_RESOLVE_ROUNDS):
        ok, output = _run(_spark_resolver_command(coordinate))
        if ok:
            return True
        missing = re.findall(r"download failed: ([^#\s]+)#([^;\s]+);([^!\s]+)!", output)
        if not (shutil.which("mvn") and missing):
            break
        for group, artifact, version in sorted(set(missing)):
            _run(["mvn", "-q", "-B", "dependency:get", "-Dtransitive=false",
                  f"-Dartifact={group}:{artifact}:{version}"])
    log.warning("Spark's resolver could not resolve %s: %s", coordinate, output[-2000:])
    return False


MAX_RESOLVE_ROUNDS = 3


def _spark_resolver_command(coordinate: str) -> list[str]:
    """A Python command that starts (and stops) a local JVM with ``coordinate`` as a package."""
    script = ("from pyspark.sql import SparkSession as S; "
              f"S.builder.master('local[1]').config('spark.jars.packages', '{coordinate}')"
              ".getOrCreate().stop()")
    return [sys.executable, "-c", script]


def _run(command: list[str]) -> tuple[bool, str]:
    """(exit status 0, stdout + stderr) of ``command``."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    return result.returncode == 0, result.stdout + result.stderr
