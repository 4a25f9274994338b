"""``python -m butterfly_lab.bench`` is ``butterfly-bench``."""

import sys

from butterfly_lab.bench.main import main

sys.exit(main())
