"""`python -m tdev_recovery` runs a worker replica (see tdev_recovery.cli)."""

import sys

from tdev_recovery.cli import main

sys.exit(main())
