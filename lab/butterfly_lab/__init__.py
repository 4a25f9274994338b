"""butterfly's lab: the tests' and benchmarks' hosts, VMs and guests, kept out of the product.

``lab`` builds switch labs in network namespaces (hosts running a real
``butterflyd``, VMs with an ``agent``, a fabric); ``daemon`` runs a butterflyd
in a child process; ``guest`` boots QEMU guests; ``bench`` is
``butterfly-bench``. The lab drives butterfly from outside (processes, the
API client, the CLI) and nothing of butterfly imports it. This file imports
nothing, so ``tools/guest-image`` can load ``guest`` (standard library only)
without butterfly installed.
"""
