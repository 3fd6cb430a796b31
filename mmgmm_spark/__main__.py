"""``python -m mmgmm_spark COMMAND ...``: the ``mmgmm`` command line."""

import sys

from mmgmm_spark.app.cli import main

sys.exit(main())
