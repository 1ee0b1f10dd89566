"""``python -m tokensvc``: the same as the ``tokensvc`` console script."""

import sys

from tokensvc.cli import main

sys.exit(main())
