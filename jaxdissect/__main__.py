"""``python -m jaxdissect``."""

import sys

from jaxdissect.cli import main

sys.exit(main())
