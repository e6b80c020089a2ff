"""``python -m recfunnel.cli``: how launchers (torchrun) and tests start the console script."""

import sys

from recfunnel.cli import main

sys.exit(main())
