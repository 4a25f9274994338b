"""Benchmarks: ``butterfly-bench SUBCOMMAND`` measures a part of butterfly.

``main`` dispatches to one module per subcommand (``api``: the control
plane over ZeroMQ); ``daemon`` runs a control-plane butterflyd in a child
process, for benchmarks and tests. Nothing here is imported by the daemon.
"""
