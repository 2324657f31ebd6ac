"""``python -m mergebench`` runs the CLI."""

from mergebench.cli import main

main()
