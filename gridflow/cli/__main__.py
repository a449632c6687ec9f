"""``python -m gridflow.cli``: the ``gridflow`` command, as a batch job may run it."""

from gridflow.cli import main

main()
