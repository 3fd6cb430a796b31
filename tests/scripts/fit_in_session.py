"""Fit on Spark in a fresh process (a local-cluster or a Spark Connect session) for the tests.

Usage: python fit_in_session.py (--master MASTER | --remote URL) DATA.npz OUT.npz
DATA.npz holds the modality arrays (NaN rows = missing) and the initial parameters; OUT.npz
receives the fitted weights, means, covariances and lower-bound history.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from mmgmm_spark import Modality, MultimodalGaussianMixture
from mmgmm_spark.spark.arrow import arrow_table
from mmgmm_spark.spark.session import build_spark


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--master")
    parser.add_argument("--remote")
    parser.add_argument("data")
    parser.add_argument("out")
    args = parser.parse_args()
    arrays = dict(np.load(args.data, allow_pickle=False))
    spec = json.loads(str(arrays.pop("spec")))
    modalities = [Modality.from_dict(m) for m in spec["modalities"]]
    names = [m.name for m in modalities]
    spark = build_spark(master=args.master, remote=args.remote, app_name="mmgmm-test-fit")
    df = spark.createDataFrame(arrow_table({n: arrays[f"x_{n}"] for n in names}))
    df = df.repartition(spec["partitions"])
    model = MultimodalGaussianMixture(
        modalities, spec["n_components"], tol=0.0, max_iter=spec["max_iter"],
        weights_init=arrays["weights_init"],
        means_init={n: arrays[f"means_init_{n}"] for n in names},
        precisions_init={n: arrays[f"precisions_init_{n}"] for n in names})
    model.fit(df, on_iteration=None)
    out = {"weights": model.weights_, "lower_bounds": np.array(model.lower_bounds_)}
    for n in names:
        out[f"means_{n}"] = model.means_[n]
        out[f"covariances_{n}"] = model.covariances_[n]
    np.savez(args.out, **out)
    spark.stop()


if __name__ == "__main__":
    main()
