"""`python -m compiler` is the same as the `podnet` command."""

import sys

from compiler.cli import main

sys.exit(main())
