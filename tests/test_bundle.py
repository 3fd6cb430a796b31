"""The Databricks Asset Bundle: structure, entry point, CLI parameters, no secrets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from mmgmm_spark.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
JOB_FILES = sorted((ROOT / "resources").glob("*.job.yml"))
YAML_FILES = [ROOT / "databricks.yml", *JOB_FILES, *sorted((ROOT / "conf").glob("*.y*ml"))]
SECRET_KEY = re.compile(r"(token|password|secret|api[_-]?key|client[_-]?secret|credential)",
                        re.IGNORECASE)
SECRET_VALUE = re.compile(r"(dapi[0-9a-f]{16,}|ghp_[A-Za-z0-9]{20,}|AKIA[0-9A-Z]{16}|"
                          r"xox[bp]-|-----BEGIN [A-Z ]*PRIVATE KEY)")


def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _jobs() -> dict[str, dict]:
    jobs: dict[str, dict] = {}
    for path in JOB_FILES:
        jobs.update(_load(path)["resources"]["jobs"])
    return jobs


def _walk(node, path=()):
    """(key path, key, scalar value) of every leaf of a YAML document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, (*path, str(key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, (*path, str(index)))
    else:
        yield path, node


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert isinstance(_load(path), dict)


def test_bundle_includes_the_job_resources() -> None:
    bundle = _load(ROOT / "databricks.yml")
    assert bundle["bundle"]["name"]
    assert "resources/*.job.yml" in bundle["include"]
    assert JOB_FILES, "no resources/*.job.yml"
    assert {"dev", "prod"} <= set(bundle["targets"])
    wheel = bundle["artifacts"]["mmgmm_wheel"]
    assert wheel["type"] == "whl"
    # every ${var.x} used by the jobs is declared
    used = {m for path in JOB_FILES for m in re.findall(r"\$\{var\.(\w+)\}", path.read_text())}
    assert used <= set(bundle["variables"]), used - set(bundle["variables"])


def test_train_and_score_jobs_are_scheduled() -> None:
    jobs = _jobs()
    assert {"mmgmm_train", "mmgmm_score"} <= set(jobs)
    for name in ("mmgmm_train", "mmgmm_score"):
        schedule = jobs[name]["schedule"]
        fields = schedule["quartz_cron_expression"].split()
        assert len(fields) in (6, 7), schedule
        assert schedule["timezone_id"]
    # nightly train (fixed hour), hourly score (every hour)
    assert jobs["mmgmm_train"]["schedule"]["quartz_cron_expression"].split()[2] != "*"
    assert jobs["mmgmm_score"]["schedule"]["quartz_cron_expression"].split()[2] == "*"


def test_wheel_tasks_call_real_cli_subcommands() -> None:
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)["project"]
    scripts = project["scripts"]
    distribution = re.sub(r"[-_.]+", "_", project["name"]).lower()
    subcommands = build_parser()._subparsers._group_actions[0].choices
    expected = {"mmgmm_train": "train", "mmgmm_score": "score", "mmgmm_monitor": "monitor",
                "mmgmm_features": "features"}
    for job_name, job in _jobs().items():
        clusters = {c["job_cluster_key"] for c in job.get("job_clusters", [])}
        for task in job["tasks"]:
            wheel_task = task["python_wheel_task"]
            assert wheel_task["entry_point"] in scripts
            assert scripts[wheel_task["entry_point"]] == "mmgmm_spark.app.cli:main"
            assert re.sub(r"[-_.]+", "_", wheel_task["package_name"]).lower() == distribution
            parameters = wheel_task["parameters"]
            assert parameters[0] in subcommands, parameters
            assert parameters[0] == expected[job_name]
            # the arguments parse with the real CLI parser (variables left as placeholders)
            args = build_parser().parse_args(parameters)
            assert args.command == parameters[0]
            assert args.config == "${var.config_path}"
            assert task["job_cluster_key"] in clusters
            assert any(lib.get("whl", "").endswith(".whl") for lib in task["libraries"])


def test_train_cluster_is_single_user() -> None:
    train = _jobs()["mmgmm_train"]
    clusters = {c["job_cluster_key"]: c["new_cluster"] for c in train["job_clusters"]}
    for task in train["tasks"]:
        assert clusters[task["job_cluster_key"]]["data_security_mode"] == "SINGLE_USER"


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_secrets_in_yaml(path: Path) -> None:
    text = path.read_text()
    assert not SECRET_VALUE.search(text)
    for keys, value in _walk(_load(path)):
        if value is None or isinstance(value, bool | int | float):
            continue
        assert not SECRET_KEY.search(keys[-1]), f"{path.name}: {'.'.join(keys)} looks secret"
        assert not re.search(r"(?i)(token|password)\s*[:=]", str(value)), (path.name, keys)


def test_hourly_score_job_is_incremental_and_monitored() -> None:
    jobs = _jobs()
    assert "--incremental" in jobs["mmgmm_score"]["tasks"][0]["python_wheel_task"]["parameters"]
    assert _load(ROOT / "conf" / "databricks.yaml")["scoring"]["mode"] == "incremental"
    assert jobs["mmgmm_monitor"]["schedule"]["quartz_cron_expression"].split()[2] == "*"


def test_nightly_features_job_runs_after_training() -> None:
    job = _jobs()["mmgmm_features"]
    parameters = job["tasks"][0]["python_wheel_task"]["parameters"]
    assert build_parser().parse_args(parameters).output_table == "${var.features_table}"
    hour = job["schedule"]["quartz_cron_expression"].split()[2]
    train_hour = _jobs()["mmgmm_train"]["schedule"]["quartz_cron_expression"].split()[2]
    assert hour.isdigit() and train_hour.isdigit() and int(hour) > int(train_hour)
