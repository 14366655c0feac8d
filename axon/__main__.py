"""``python -m axon`` runs the CLI."""

from axon.cli import main

raise SystemExit(main())
