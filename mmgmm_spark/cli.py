"""The ``mmgmm`` command line."""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np

from mmgmm_spark.model import MultimodalGaussianMixture
from mmgmm_spark.synthetic import DEMO_MODALITIES, generate


def demo(args: argparse.Namespace) -> int:
    """Generate multimodal data, fit the mixture in memory and print it."""
    data = generate(n_rows=args.rows, seed=args.seed)
    print(f"Generated {args.rows} entities with modalities "
          f"{[f'{m.name}({m.dim}, {m.covariance_type})' for m in DEMO_MODALITIES]}")
    model = MultimodalGaussianMixture(list(DEMO_MODALITIES), n_components=args.components,
                                      random_state=args.seed, max_iter=200)
    model.fit(data.features)
    print(f"Fitted K={model.n_components}: converged={model.converged_} after "
          f"{model.n_iter_} iterations, mean log-likelihood {model.lower_bound_:.4f}")
    print("weights:", np.round(model.weights_, 3).tolist())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmgmm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("demo", help="run the end-to-end demo on generated data")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--components", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
