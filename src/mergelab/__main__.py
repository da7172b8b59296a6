"""``python -m mergelab`` runs the command line."""

import sys

from mergelab.cli import main

sys.exit(main())
