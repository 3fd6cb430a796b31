"""Fit on local-cluster[2,1,1024] and SIGKILL one executor JVM after EM iteration 2.

Usage: fit_kill_executor.py DATA.npz OUT.npz  (DATA.npz as for fit_then_die.py)
OUT.npz: fitted weights, means, covariances, lower bounds, and the killed executor's pid.
Executors are found as descendants of this driver whose command line runs
``CoarseGrainedExecutorBackend`` (``ps``; no psutil needed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from fit_then_die import build_model  # noqa: E402

from mmgmm_spark.spark.arrow import arrow_table  # noqa: E402
from mmgmm_spark.spark.session import build_spark  # noqa: E402


def executor_pids(root: int) -> list[int]:
    """Pids of the executor JVMs descending from process ``root``."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    rows = [line.split(None, 2) for line in table if line.strip()]
    children: dict[int, list[int]] = {}
    args = {}
    for row in rows:
        pid, ppid = int(row[0]), int(row[1])
        children.setdefault(ppid, []).append(pid)
        args[pid] = row[2] if len(row) > 2 else ""
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            if "CoarseGrainedExecutorBackend" in args[child]:
                found.append(child)
    return sorted(found)


def main() -> None:
    data_file, out_file = sys.argv[1:3]
    arrays = dict(np.load(data_file, allow_pickle=False))
    spec = json.loads(str(arrays.pop("spec")))
    model = build_model(spec, arrays)
    spark = build_spark("local-cluster[2,1,1024]", app_name="mmgmm-kill-executor")
    df = spark.createDataFrame(arrow_table({m.name: arrays[f"x_{m.name}"]
                                            for m in model.modalities}))
    df = df.repartition(spec["partitions"])
    killed = []

    def kill_one_executor(report) -> None:
        if report.iteration == 2:
            pids = executor_pids(os.getpid())
            assert len(pids) == 2, f"expected 2 executor JVMs, found {pids}"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    model.fit(df, on_iteration=kill_one_executor)
    alive = executor_pids(os.getpid())
    out = {"weights": model.weights_, "lower_bounds": np.array(model.lower_bounds_),
           "killed": np.array(killed), "alive_after": np.array(alive)}
    for m in model.modalities:
        out[f"means_{m.name}"] = model.means_[m.name]
        out[f"covariances_{m.name}"] = model.covariances_[m.name]
    np.savez(out_file, **out)
    spark.stop()


if __name__ == "__main__":
    main()
