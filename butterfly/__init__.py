"""butterfly: a virtual switch for cloud hypervisors.

Python is the control plane, the Linux kernel is the data plane. Packages,
from the bottom up: ``model`` (pure data and validation), ``store`` (SQLite),
``dataplane`` (the kernel), ``vhost`` (the vhost-user backend), ``service``
(use cases), ``api`` (the wire protocol), ``daemon`` and ``cli`` (entry
points). Imports flow in that direction only. The lab that tests and
benchmarks butterfly is not here: it is ``butterfly_lab``, a distribution of
its own (``lab/`` in the repository) that no butterfly module imports.
"""

__version__ = "0.1.0"
