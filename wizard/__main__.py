"""``python -m wizard``: the ``llmc-wizard`` command (how it restarts itself in a model's environment)."""

from .cli import main

raise SystemExit(main())
