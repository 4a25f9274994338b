"""Benchmarks: ``butterfly-bench SUBCOMMAND`` measures a part of butterfly.

``main`` dispatches to one module per subcommand (``api``: the control
plane over ZeroMQ), each of which runs butterfly in the lab
(:mod:`butterfly_lab.lab`, :mod:`butterfly_lab.daemon`).
"""
