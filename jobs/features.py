"""spark-submit entry point: ``spark-submit jobs/features.py --config FILE --output-table T``.

Runs ``mmgmm features`` (see ``mmgmm_spark.app.cli``) and exits with its code.
"""

import sys

from mmgmm_spark.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
