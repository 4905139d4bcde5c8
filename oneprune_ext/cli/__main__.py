"""``python -m oneprune_ext.cli``: the ``oneprune`` command."""

import sys

from . import main

sys.exit(main())
