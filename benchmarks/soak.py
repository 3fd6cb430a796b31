"""Soak test: many consecutive fit + score cycles in one process and one Spark session.

Each cycle fits the demo modalities on Spark as a tracked MLflow run (checkpointed, no model
registration) and scores the same rows into a temporary Delta table with ``score_to_delta``
(a new scoring run id per cycle). Per cycle it prints the driver's peak RSS during the cycle
(``/proc/self/status`` VmHWM, reset per cycle through ``/proc/self/clear_refs`` where the
kernel allows it; psutil is not needed), the driver's RSS at the end, the JVM heap used (after
a ``System.gc()``) and the RSS of the driver JVM. At the end it counts what could leak: staged
``write-*`` folders the Delta log does not reference, checkpoint and ``unlogged`` directories,
persisted RDDs, new temp entries; the cycles run in a child process so that, after it exits,
the script can check that none of its processes (JVM, Python workers) outlived it.

Usage::

    python benchmarks/soak.py [--cycles 20] [--rows 20000] [--components 4] [--master local[2]]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from urllib.parse import unquote

import pyarrow as pa
from deltalake import DeltaTable

from mmgmm_spark import MultimodalGaussianMixture
from mmgmm_spark.app.synthetic import DEMO_MODALITIES, generate
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.score import score_to_delta
from mmgmm_spark.spark.session import build_spark
from mmgmm_spark.tracking import TrackingConfig, tracked_fit

MB = 1024 * 1024


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process in bytes (0 when unreadable)."""
    values = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in values:
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def descendants(root: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process descending from ``root`` (via ``ps``)."""
    lines = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    children: dict[int, list[tuple[int, str]]] = {}
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) >= 2:
            children.setdefault(int(parts[1]), []).append(
                (int(parts[0]), parts[2] if len(parts) > 2 else ""))
    found, stack = [], [root]
    while stack:
        for pid, args in children.get(stack.pop(), []):
            found.append((pid, args))
            stack.append(pid)
    return found


def jvm_heap_used(spark) -> tuple[int, int]:
    """(used bytes now, used bytes after System.gc()) of the driver JVM heap."""
    runtime = spark._jvm.java.lang.Runtime.getRuntime()
    before = runtime.totalMemory() - runtime.freeMemory()
    spark._jvm.java.lang.System.gc()
    return before, runtime.totalMemory() - runtime.freeMemory()


def stray_write_dirs(table: Path) -> list[str]:
    """``write-*`` folders of the table that hold no file referenced by the Delta log."""
    if not (table / "_delta_log").is_dir():
        return []
    actions = pa.table(DeltaTable(str(table)).get_add_actions(flatten=True))
    live = {unquote(path).split("/")[0] for path in actions.column("path").to_pylist()}
    return sorted(d.name for d in table.iterdir()
                  if d.is_dir() and d.name.startswith("write-") and d.name not in live)


def cycle(spark, df, data, work: Path, table: Path, index: int, components: int) -> float:
    """One fit + score; returns its seconds."""
    started = time.perf_counter()
    config = TrackingConfig(work_dir=str(work / "mlflow"), experiment="soak",
                            registered_model_name=None)
    model = MultimodalGaussianMixture(list(DEMO_MODALITIES), components, random_state=index,
                                      max_iter=50, tol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = tracked_fit(model, df, contamination=0.01, config=config, log_model=False,
                          checkpoint_dir=str(work / "checkpoints"), run_name=f"soak-{index}")
    score_to_delta(spark, df, str(table), run.detector, model_name="soak",
                   model_version=str(index), scoring_run_id=f"cycle-{index:03d}",
                   engine="delta-rs")
    return time.perf_counter() - started


def run_cycles(args: argparse.Namespace, pid_file: Path) -> None:
    """The soak itself (in a child process): cycles, then a report of what is left."""
    logging.basicConfig(level=logging.WARNING)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    temp_root = Path(tempfile.gettempdir())
    temp_before = set(os.listdir(temp_root))
    work = Path(tempfile.mkdtemp(prefix="mmgmm-soak-"))
    table = work / "scores"
    spark = build_spark(args.master, app_name="mmgmm-soak")
    data = generate(args.rows, DEMO_MODALITIES, seed=0).features
    df = spark.createDataFrame(arrow_table(data)).repartition(4).cache()
    df.count()
    jvm_pid = next((pid for pid, cmd in descendants(os.getpid()) if "java" in cmd), None)
    can_reset = reset_peak_rss()
    print(f"{args.cycles} cycles, {args.rows} rows, K={args.components}, {args.master}; "
          f"peak RSS {'per cycle' if can_reset else 'since start (clear_refs not allowed)'}")
    print(f"{'cycle':>5} {'seconds':>8} {'peak RSS MB':>12} {'RSS MB':>8} "
          f"{'JVM heap MB':>12} {'heap after GC':>14} {'JVM RSS MB':>11}")
    rows = []
    for index in range(args.cycles):
        reset_peak_rss()
        seconds = cycle(spark, df, data, work, table, index, args.components)
        status = proc_status()
        heap, heap_gc = jvm_heap_used(spark)
        jvm_rss = proc_status(jvm_pid)["VmRSS"] if jvm_pid else 0
        rows.append((status["VmHWM"], heap_gc, jvm_rss))
        print(f"{index + 1:>5} {seconds:>8.1f} {status['VmHWM'] / MB:>12.0f} "
              f"{status['VmRSS'] / MB:>8.0f} {heap / MB:>12.0f} {heap_gc / MB:>14.0f} "
              f"{jvm_rss / MB:>11.0f}", flush=True)

    df.unpersist()
    persisted = spark.sparkContext._jsc.sc().getPersistentRDDs().size()
    checkpoint_dirs = list((work / "checkpoints").glob("*")) if (work / "checkpoints").exists() \
        else []
    unlogged = list((work / "mlflow" / "unlogged").glob("*")) if (
        work / "mlflow" / "unlogged").exists() else []
    all_writes = sorted(d.name for d in table.iterdir() if d.name.startswith("write-"))
    stray = stray_write_dirs(table)
    version = DeltaTable(str(table)).version()
    print()
    for label, column, unit in (("driver peak RSS", 0, "MB"), ("JVM heap after GC", 1, "MB"),
                                ("JVM RSS", 2, "MB")):
        values = [row[column] / MB for row in rows]
        quarters = [values[i * (len(values) - 1) // 4] for i in range(5)]
        print(f"{label} at cycles 1, 25%, 50%, 75%, last: "
              + " / ".join(f"{v:.0f}" for v in quarters) + f" {unit}")
    print(f"output table: version {version}, {len(all_writes)} write-* folders, "
          f"{len(stray)} not referenced by the log {stray[:3]}")
    print(f"checkpoint dirs left: {len(checkpoint_dirs)}; unlogged models: {len(unlogged)}; "
          f"persisted RDDs: {persisted}")
    pid_file.write_text("\n".join(str(pid) for pid, _ in descendants(os.getpid())))
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    new_temp = sorted(set(os.listdir(temp_root)) - temp_before)
    print(f"new entries in {temp_root} after spark.stop(): {len(new_temp)} {new_temp[:5]}")


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still exist (zombies count as gone)."""
    left = []
    for pid in pids:
        state = Path(f"/proc/{pid}/stat")
        if state.exists() and state.read_text().split(") ")[-1][:1] != "Z":
            left.append(pid)
    return left


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--child-pid-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_pid_file:
        run_cycles(args, Path(args.child_pid_file))
        return
    # Run the cycles in a child process so that what outlives it can be checked afterwards.
    with tempfile.TemporaryDirectory() as scratch:
        pid_file = Path(scratch) / "pids"
        temp_before = set(os.listdir(tempfile.gettempdir()))
        subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child-pid-file",
                        str(pid_file)], check=True)
        time.sleep(2)
        children = [int(pid) for pid in pid_file.read_text().split()]
        new_temp = sorted(set(os.listdir(tempfile.gettempdir())) - temp_before - {scratch})
    print(f"2 s after the soak process exited: {len(alive(children))} of its {len(children)} "
          f"child processes (JVM, Python workers) alive; {len(new_temp)} new temp entries "
          f"{new_temp[:5]}")


if __name__ == "__main__":
    main()
