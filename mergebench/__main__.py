"""``python -m mergebench`` runs the CLI."""

from mergebench.cli import run

run()
