"""``python -m safedpo.cli`` (what ``accelerate launch -m safedpo.cli`` runs)."""

import sys

from safedpo.cli import main

sys.exit(main())
