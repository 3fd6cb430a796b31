"""Issue 18's quantisation ablation: per-set AUROC of one label-free rule on the classical sets.

Rules that are a :class:`FusionConfig` option run through ``--option KEY=JSON`` exactly as
``python -m mmgmm_spark.app.benchmark_adbench`` does; three experiments that are not package
options are rules of this script:

- ``--point-mass C``: with ``reg_covar_mode="dequantise"``, a feature with more than half of the
  rows at one value also gets the variance floor C x its variance (on the features the mixture
  fits);
- ``--noise``: fit on x + U(-step/2, step/2) (step: each input feature's smallest gap between
  distinct values, seed 0) and score the clean rows: explicit dequantisation in input units;
- ``--held-out``: K (of ``n_components``) by the mean log-density of a 20% held-out split
  (seed 1) instead of BIC, then the fit on every row with that K (the next best K when it is
  not admissible).

Results are cached per rule and set in ``/tmp/issue18/<name>.json``; sets run smallest first.
Usage: ``python benchmarks/ablation_issue18.py NAME [--option KEY=JSON ...] [--point-mass C |
--noise | --held-out]``.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

import mmgmm_spark.core.spec as spec_module
from mmgmm_spark.app.benchmark_adbench import config_with, discover, load_set, ranking_metrics
from mmgmm_spark.core.modality import Modality
from mmgmm_spark.core.params import quantisation_variances
from mmgmm_spark.models.fusion import FusionConfig, FusionModel

DATA = Path(__file__).resolve().parents[2] / "shared/datasets/adbench/classical"
SETS = ["42_WBC", "6_cardio", "40_vowels", "38_thyroid", "31_satimage-2", "30_satellite",
        "28_pendigits", "2_annthyroid", "23_mammography", "32_shuttle", "34_smtp", "16_http"]
MAX_ROWS = 100_000


def point_mass_floors(share: float) -> None:
    """Make ``dequantise`` floor every point-mass feature at ``share`` x its variance."""
    def floors(values: np.ndarray) -> np.ndarray:
        out = quantisation_variances(values)
        for j in range(values.shape[1]):
            _, counts = np.unique(values[:, j], return_counts=True)
            if counts.max() > 0.5 * len(values):
                out[j] = max(out[j], share * float(values[:, j].var()))
        return out
    spec_module.quantisation_variances = floors


def dequantised(x: np.ndarray) -> np.ndarray:
    """(n, d) x plus U(-step_j/2, step_j/2) noise per feature (seed 0)."""
    steps = np.array([np.diff(np.unique(c)).min() if len(np.unique(c)) > 1 else 0.0
                      for c in x.T])
    return x + np.random.RandomState(0).uniform(-0.5, 0.5, x.shape) * steps


def fitted(x: np.ndarray, config: FusionConfig) -> FusionModel:
    model = FusionModel([Modality("x", x.shape[1])], config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit({"x": x})


def held_out_order(x: np.ndarray, config: FusionConfig) -> list[int]:
    """K values of ``config`` by decreasing held-out mean log-density (80/20 split)."""
    order = np.random.RandomState(1).permutation(len(x))
    cut = int(0.8 * len(x))
    held = {}
    for k in config.n_components:
        try:
            model = fitted(x[order[:cut]], replace(config, n_components=(k,)))
            held[k] = float(model.log_density({"x": x[order[cut:]]}).mean())
        except ValueError:                      # no admissible fit of this K
            held[k] = -np.inf
    return sorted(held, key=held.get, reverse=True)


def run_one(x: np.ndarray, y: np.ndarray, config: FusionConfig, args) -> dict:
    """AUROC (and K) of the rule on one set: fit on ``x``'s fit rows, score every row."""
    n = len(y)
    rows = (np.sort(np.random.RandomState(0).choice(n, MAX_ROWS, replace=False))
            if n > MAX_ROWS else np.arange(n))
    ks = held_out_order(x[rows], config) if args.held_out else [None]
    for k in ks:
        chosen = config if k is None else replace(config, n_components=(k,))
        try:
            model = fitted(dequantised(x)[rows] if args.noise else x[rows], chosen)
        except ValueError:
            continue
        score = -model.score_samples({"x": x})
        return {**ranking_metrics(y, score), "k": model.chosen["joint"]["n_components"]}
    raise ValueError("no admissible K")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--point-mass", type=float)
    parser.add_argument("--noise", action="store_true")
    parser.add_argument("--held-out", action="store_true")
    args = parser.parse_args()
    if args.point_mass is not None:
        point_mass_floors(args.point_mass)
    config = replace(config_with(args.option), strategy="joint")
    cache = Path(f"/tmp/issue18/{args.name}.json")
    cache.parent.mkdir(exist_ok=True)
    results = json.loads(cache.read_text()) if cache.exists() else {}
    sets = discover(DATA)
    for name in (s for s in SETS if s not in results):
        data, y = load_set(sets[name])
        results[name] = run_one(data["x"].astype(np.float64), y, config, args)
        cache.write_text(json.dumps(results, indent=1))
        print(args.name, name, round(results[name]["auroc"], 3), results[name]["k"], flush=True)


if __name__ == "__main__":
    main()
