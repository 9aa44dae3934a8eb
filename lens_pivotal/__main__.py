"""``python -m lens_pivotal ...`` runs the ``lens-pivotal`` command line."""

import sys

from lens_pivotal.cli.main import main

sys.exit(main())
