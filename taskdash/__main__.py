"""``python -m taskdash``."""

import sys

from taskdash.cli import main

sys.exit(main())
