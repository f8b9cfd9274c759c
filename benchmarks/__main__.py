"""``python -m benchmarks [--quick]`` runs every benchmark."""

import sys

from benchmarks import cell_overhead

sys.exit(cell_overhead.main(sys.argv[1:]))
