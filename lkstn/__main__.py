"""``python -m lkstn``: the ``lkstn`` command."""

import sys

from lkstn.cli import main

sys.exit(main())
