"""``python -m lightning_curate`` is the ``lightning-curate`` console script."""

from lightning_curate.cli import main

main()
