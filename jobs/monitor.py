"""spark-submit entry point: ``spark-submit jobs/monitor.py --config FILE [--set KEY=VALUE ...]``.

Runs ``mmgmm monitor`` (see ``mmgmm_spark.app.cli``) and exits with its code.
"""

import sys

from mmgmm_spark.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
