"""Fit with a checkpoint after every EM iteration, then SIGKILL this driver (resume tests).

Usage: fit_then_die.py DATA.npz CHECKPOINT_DIR --kill-after N [--master M] [--work-dir W]

DATA.npz: ``spec`` (JSON: modalities, n_components, max_iter, tol, n_init, init_params,
random_state, partitions) and ``x_<modality>`` arrays, optionally ``weights_init``,
``means_init_<m>``, ``precisions_init_<m>``. In memory by default; ``--master`` fits a Spark
DataFrame; ``--work-dir`` makes it a tracked fit (checkpoints under CHECKPOINT_DIR/<run_id>).
The process kills itself (SIGKILL, no cleanup) when iteration N of the last restart reports.
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import numpy as np

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.core.em import IterationReport


def build_model(spec: dict, arrays: dict) -> MultimodalGaussianMixture:
    """The estimator the spec describes (fixed initial parameters when the file has them)."""
    modalities = [Modality.from_dict(m) for m in spec["modalities"]]
    init = {}
    if "weights_init" in arrays:
        init = {"weights_init": arrays["weights_init"],
                "means_init": {m.name: arrays[f"means_init_{m.name}"] for m in modalities},
                "precisions_init": {m.name: arrays[f"precisions_init_{m.name}"]
                                    for m in modalities}}
    return MultimodalGaussianMixture(
        modalities, spec["n_components"], tol=spec["tol"], max_iter=spec["max_iter"],
        n_init=spec["n_init"], init_params=spec["init_params"],
        random_state=spec["random_state"], **init)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--kill-after", type=int, required=True)
    parser.add_argument("--kill-restart", type=int, default=0)
    parser.add_argument("--master")
    parser.add_argument("--work-dir")
    args = parser.parse_args()
    arrays = dict(np.load(args.data, allow_pickle=False))
    spec = json.loads(str(arrays.pop("spec")))
    model = build_model(spec, arrays)
    data = {m.name: arrays[f"x_{m.name}"] for m in model.modalities}
    if args.master:
        from mmgmm_spark.spark.arrow import arrow_table
        from mmgmm_spark.spark.session import build_spark

        spark = build_spark(args.master, app_name="mmgmm-fit-then-die")
        data = spark.createDataFrame(arrow_table(data)).repartition(spec["partitions"])
    restart = {"index": -1}

    def die(report: IterationReport) -> None:
        restart["index"] += report.iteration == 1
        if (restart["index"], report.iteration) == (args.kill_restart, args.kill_after):
            os.kill(os.getpid(), signal.SIGKILL)

    if args.work_dir:
        from mmgmm_spark.tracking import TrackingConfig, tracked_fit
        from mmgmm_spark.tracking import fit as tracking_fit

        logger_call = tracking_fit.MetricLogger.__call__

        def logged_then_die(self, report: IterationReport) -> None:
            logger_call(self, report)      # the metric of the iteration is logged, then death
            die(report)

        tracking_fit.MetricLogger.__call__ = logged_then_die
        config = TrackingConfig(work_dir=args.work_dir, experiment="resume",
                                registered_model_name=None)
        tracked_fit(model, data, config=config, checkpoint_dir=args.checkpoint_dir,
                    log_model=False)
    else:
        from mmgmm_spark.io.checkpoints import Checkpointer

        model.fit(data, checkpointer=Checkpointer(args.checkpoint_dir, model),
                             on_iteration=die)
    raise SystemExit("the fit ended before the kill point")


if __name__ == "__main__":
    main()
