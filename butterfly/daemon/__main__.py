"""``python -m butterfly.daemon`` runs butterflyd."""

import sys

from butterfly.daemon.main import main

sys.exit(main())
