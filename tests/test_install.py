"""Installed as a user installs it: ``pip install <clone>`` into a fresh virtual environment,
then ``mmgmm`` from an empty directory (no clone, no ``conf/`` beside it)."""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest
from deltalake import DeltaTable

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A venv with the project installed from a copy of the source (not editable).

    The venv sees the machine's site-packages for the dependencies (installing pyspark and
    mlflow again would only measure the network); the package itself is the venv's own.
    """
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, system_site_packages=True, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps",
                    str(ROOT)], check=True, timeout=600)
    return env_dir / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # a user's shell: none of this process's Python settings (its Spark session sets
    # PYSPARK_PYTHON to this interpreter, which is not the venv's)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env |= {"SPARK_LOCAL_IP": "127.0.0.1", "PATH": f"{bin_dir}{os.pathsep}{env['PATH']}"}
    return subprocess.run([str(bin_dir / "mmgmm"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def test_installed_package_is_the_venvs_own(installed: Path, tmp_path: Path) -> None:
    found = subprocess.run([str(installed / "python"), "-c",
                            "import mmgmm_spark; print(mmgmm_spark.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert str(installed.parent) in found.stdout, found.stdout
    version = _run(installed, tmp_path, "--version")
    assert version.returncode == 0
    from importlib.metadata import version as installed_version

    assert version.stdout.strip() == f"mmgmm {installed_version('mmgmm-spark')}"


@pytest.mark.slow
def test_demo_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _run(installed, empty, "demo", "--rows", "5000", "--work-dir", "out")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "AUROC" in result.stdout
    tables = empty / "out" / "tables"
    assert sorted(p.name for p in tables.iterdir()) == ["image", "labels", "scores", "sensor",
                                                        "text"]
    scores = DeltaTable(str(tables / "scores")).to_pandas()
    assert len(scores) == 5000 and scores["id"].is_unique
    assert (empty / "out" / "mlflow.db").exists()
    assert sorted(p.name for p in empty.iterdir()) == ["out"]
