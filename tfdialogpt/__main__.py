"""`python -m tfdialogpt` runs the command line."""

import sys

from tfdialogpt.cli import main

sys.exit(main())
