"""``python -m nbtrack`` works like ``nbtrack``."""

import sys

from nbtrack.cli import main

sys.exit(main())
