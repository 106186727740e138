"""``python -m unified_profile.server.demo``: see :mod:`unified_profile.server.demo.run`."""

import sys

from .run import main

sys.exit(main())
