"""``python -m butterfly`` runs the ``butterfly`` command."""

from butterfly.cli.main import main

main()
