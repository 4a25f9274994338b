"""The daemon: configuration, logging, the composition root and signals."""
