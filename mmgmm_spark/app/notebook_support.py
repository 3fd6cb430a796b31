"""Small helpers that let the Databricks notebooks in ``notebooks/`` also run locally.

On Databricks ``dbutils`` and ``spark`` are predefined in the notebook; elsewhere
:func:`widget` returns the default and :func:`spark_for` builds a session through
:func:`mmgmm_spark.spark.session.build_spark` (the one place that builds a SparkSession).
"""

from __future__ import annotations

import re
from typing import Any

from mmgmm_spark.app.config import AppConfig, load_config


def _dbutils() -> Any | None:
    """Databricks' ``dbutils`` when running in a Databricks notebook, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None:
        return None
    return shell.user_ns.get("dbutils")


def widget(name: str, default: str, label: str | None = None) -> str:
    """A text parameter: ``dbutils.widgets.text`` + ``get`` on Databricks, else ``default``."""
    dbutils = _dbutils()
    if dbutils is None:
        return default
    dbutils.widgets.text(name, default, label or name)
    return dbutils.widgets.get(name)


def parse_overrides(text: str) -> list[str]:
    """``"model.n_components=4; work_dir=/tmp/x"`` (``;`` or newlines) as ``--set`` items."""
    return [item.strip() for item in re.split(r"[;\n]", text or "") if item.strip()]


def load_notebook_config(path: str, overrides: str = "") -> AppConfig:
    """:func:`mmgmm_spark.app.config.load_config` with the overrides widget's text."""
    return load_config(path, parse_overrides(overrides))


def spark_for(config: AppConfig):
    """The session for a notebook that has no predefined ``spark`` (``build_spark``)."""
    from mmgmm_spark.spark.session import build_spark

    return build_spark(config.spark.master, config.spark.app_name, config.spark.conf,
                       config.spark.remote)
