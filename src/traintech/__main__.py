"""Run the ``traintech`` command as ``python -m traintech``."""

from traintech.cli import main

raise SystemExit(main())
