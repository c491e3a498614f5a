"""``python -m pygup``: the ``pygup`` command."""
import sys

from pygup.tools.cli import main

sys.exit(main())
