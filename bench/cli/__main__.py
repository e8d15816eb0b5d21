"""``python -m bench.cli``: the ``bench`` command (the tests and ``gpu_check.sh`` start it so)."""

import sys

from bench.cli import main

sys.exit(main())
