"""Spark servers the tests start and stop: a Spark Connect server and a standalone cluster.

Every server listens on loopback on free ports (other test runs on the machine may use
Spark's default ports), runs in its own process group (so stopping it also stops its Python
workers and executors) and logs to a file under the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyspark

from mmgmm_spark.spark.session import LOCAL_DEFAULTS

SPARK_HOME = Path(pyspark.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_TIMEOUT = 300.0


def free_port() -> int:
    """A TCP port free on loopback now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def server_env(checkout: bool = True) -> dict[str, str]:
    """The environment of a server: loopback, this interpreter for Python workers and, with
    ``checkout``, this checkout first on their path (the installed package may be another
    checkout; a cluster's executors get the package from the job instead)."""
    env = {**os.environ, "SPARK_LOCAL_IP": HOST, "PYSPARK_PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)
    return env | ({"PYTHONPATH": str(ROOT)} if checkout else {})


@dataclass
class Server:
    """One server process (its own process group) and its log file."""

    process: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, command: list[str], log: Path, cwd: Path, checkout: bool = True,
              env: Mapping[str, str] | None = None) -> Server:
        out = log.open("wb")
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=server_env(checkout) | dict(env or {}),
                                   start_new_session=True)
        out.close()
        return cls(process, log)

    def wait_until(self, ready, what: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``ready()`` until true; fail with the log's tail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not start; log {self.log}:\n"
                                   f"{self.log.read_text(errors='replace')[-4000:]}")
            time.sleep(0.5)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the whole process group and wait for the server process."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):  # its Python workers, executors...
            os.killpg(self.process.pid, signal.SIGKILL)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def start_connect_server(work: Path, conf: Mapping[str, str], packages: str | None
                         ) -> tuple[Server, str]:
    """A Spark Connect server on local[2] and a free loopback port; returns it and its URL.

    ``conf`` are its Spark properties (e.g. Delta's extension and catalog), ``packages`` the
    Maven coordinates of extra jars (``--packages``).
    """
    port = free_port()
    settings = {**conf, "spark.connect.grpc.binding.port": str(port),
                "spark.connect.grpc.binding.address": HOST,
                "spark.sql.warehouse.dir": str(work / "warehouse")}
    command = [str(SPARK_HOME / "bin" / "spark-submit"), "--master", "local[2]",
               "--class", CONNECT_SERVER, "--name", "mmgmm-tests-connect",
               *(["--packages", packages] if packages else []),
               *[arg for key, value in settings.items() for arg in ("--conf", f"{key}={value}")]]
    server = Server.start(command, work / "connect-server.log", work)
    server.wait_until(lambda: port_open(port), f"Spark Connect server on port {port}")
    return server, f"sc://{HOST}:{port}"


@dataclass
class Cluster:
    """A standalone master and its workers, each a :class:`Server`."""

    master: Server
    url: str
    web_port: int
    workers: list[Server] = field(default_factory=list)

    def state(self) -> dict:
        """The master's JSON status page (workers, applications)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.web_port}/json/", timeout=10) as r:
            return json.loads(r.read())

    def alive_workers(self) -> int:
        try:
            return sum(w["state"] == "ALIVE" for w in self.state()["workers"])
        except OSError:
            return 0

    def stop(self) -> None:
        for server in [*self.workers, self.master]:
            server.stop()


JIT_OPTIONS = LOCAL_DEFAULTS["spark.driver.extraJavaOptions"]
"""The local sessions' JVM options (C1 compiler only, a larger code cache), for the cluster's
JVMs too: on 2 cores, C2's compilation in seven JVMs (master, 2 workers, driver, 2 executors)
competes with the Python workers for minutes."""


def start_cluster(work: Path, n_workers: int = 2, cores: int = 1, memory: str = "1g") -> Cluster:
    """A standalone master and ``n_workers`` workers (``cores`` and ``memory`` each) on loopback,
    started with pyspark's ``bin/spark-class``; returns once every worker is registered."""
    spark_class = str(SPARK_HOME / "bin" / "spark-class")
    port, web_port = free_port(), free_port()
    daemon = {"SPARK_DAEMON_JAVA_OPTS": JIT_OPTIONS}
    master = Server.start([spark_class, "org.apache.spark.deploy.master.Master", "--host", HOST,
                           "--port", str(port), "--webui-port", str(web_port)],
                          work / "master.log", work, checkout=False,
                          # its REST submission server would take the fixed port 6066
                          env={**daemon, "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false"})
    cluster = Cluster(master, f"spark://{HOST}:{port}", web_port)
    master.wait_until(lambda: port_open(web_port), "Spark standalone master")
    for i in range(n_workers):
        worker_dir = work / f"worker-{i}"
        worker_dir.mkdir()
        cluster.workers.append(Server.start(
            [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", HOST,
             "--cores", str(cores), "--memory", memory, "--webui-port", str(free_port()),
             "--work-dir", str(worker_dir), cluster.url], work / f"worker-{i}.log", work,
            checkout=False, env=daemon))
    master.wait_until(lambda: cluster.alive_workers() == n_workers,
                      f"{n_workers} standalone workers")
    return cluster


def registered_champion(work_dir: Path, model_name: str):
    """The detector registered as ``model_name@champion`` in ``work_dir``'s SQLite MLflow."""
    from mmgmm_spark.tracking import load_detector
    from mmgmm_spark.tracking import tracking as tracking_context
    from mmgmm_spark.tracking.config import TrackingConfig

    uri = f"sqlite:///{work_dir / 'mlflow.db'}"
    with tracking_context(TrackingConfig(work_dir=str(work_dir), tracking_uri=uri)):
        return load_detector(f"models:/{model_name}@champion")
