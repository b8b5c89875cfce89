"""``python -m chatstate``: the same as the ``chatstate`` command."""

from chatstate.cli import main

raise SystemExit(main())
