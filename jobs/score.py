"""spark-submit entry point: ``spark-submit jobs/score.py --config FILE [--set KEY=VALUE ...]``.

Runs ``mmgmm score`` (see ``mmgmm_spark.app.cli``) and exits with its code.
"""

import sys

from mmgmm_spark.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
