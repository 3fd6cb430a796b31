"""spark-submit entry point: ``spark-submit jobs/ingest.py --config FILE [--set KEY=VALUE ...]``.

Runs ``mmgmm ingest`` (see ``mmgmm_spark.app.cli``) and exits with its code.
"""

import sys

from mmgmm_spark.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
