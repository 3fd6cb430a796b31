"""How far fusion can go on a multi-view ADBench set: non-mixture detectors on each view and
on all views together, side by side.

The fusion goal of the accuracy benchmark is stated relative to the best single view. This
script measures, with detectors that are not this project's model, how much any fusion gains
on the same data, so the mixture's numbers can be read against what the embeddings allow:

- ``knn``: mean Euclidean distance to the 5 nearest other rows (the usual kNN detector),
  on standardised features;
- ``ledoit_wolf``: Mahalanobis distance under scikit-learn's Ledoit-Wolf shrunk covariance
  (a one-Gaussian detector that needs no projection when rows are fewer than features).

Each detector scores every view alone and the concatenation of all views (early fusion), on
the same unsupervised protocol as ``mmgmm benchmark adbench`` (fit on all rows, labels only
for AUROC). Printed: per set and detector, the AUROCs, then the means and, per detector,
``fused - best single view``.

Usage::

    python benchmarks/reference_detectors.py --data-dir ../shared/datasets/adbench/mvtec_two_view
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from mmgmm_spark.app.benchmark_adbench import discover, load_set
from mmgmm_spark.app.references import knn_score, ledoit_wolf_score

FUSED = "all views"
DETECTORS = {"knn": knn_score, "ledoit_wolf": ledoit_wolf_score}
"""The detectors of :mod:`mmgmm_spark.app.references` compared here (fit on all rows)."""


def set_aurocs(data: dict[str, np.ndarray], y: np.ndarray) -> dict[str, dict[str, float]]:
    """{detector: {view or FUSED: AUROC}} of one multi-view set."""
    inputs = {**data, FUSED: np.hstack(list(data.values()))}
    return {name: {view: float(roc_auc_score(y, detector(x, x, 0))) for view, x in inputs.items()}
            for name, detector in DETECTORS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    args = parser.parse_args(argv)
    sets = {name: views for name, views in discover(args.data_dir).items() if len(views) > 1}
    if not sets:
        print(f"No multi-view sets (<name>_<view>.npz) under {args.data_dir}.", file=sys.stderr)
        return 2
    per_set = {}
    for name, views in sets.items():
        per_set[name] = set_aurocs(*load_set(views))
        print(name, {d: {v: round(a, 3) for v, a in r.items()} for d, r in per_set[name].items()},
              flush=True)
    print("\nmean AUROC over", len(per_set), "sets")
    for detector in DETECTORS:
        means = {view: float(np.mean([r[detector][view] for r in per_set.values()]))
                 for view in next(iter(per_set.values()))[detector]}
        best_single = max(a for view, a in means.items() if view != FUSED)
        listed = ", ".join(f"{view} {a:.3f}" for view, a in means.items())
        print(f"{detector:12s} {listed}; fused - best single view = "
              f"{means[FUSED] - best_single:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
