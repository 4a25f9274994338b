"""``python -m butterfly.bench`` is ``butterfly-bench``."""

import sys

from butterfly.bench.main import main

sys.exit(main())
