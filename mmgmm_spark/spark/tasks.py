"""What every function this project runs inside Spark's Python workers does first.

PySpark's daemon runs a full ``gc.collect()`` after every task of a reused Python worker, and
the worker takes its next task only after it. With numpy, scipy and pyarrow imported that scan
costs tens of milliseconds per task, paid on every EM pass. ``gc.freeze()`` at the start of a
task moves the objects alive then (imported modules, the worker's state) to a permanent
generation the collector skips, so the scan after the task covers only what the task created.
Reference counting still frees frozen objects; only cycles among them are no longer collected,
and the collection that just ran after the previous task left none.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def spark_task(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run by Spark tasks, with the worker's long-lived objects frozen first."""

    @functools.wraps(function)
    def task(*args: P.args, **kwargs: P.kwargs) -> R:
        gc.freeze()
        return function(*args, **kwargs)

    return task
