"""``python -m echos_core`` is the ``echos`` command."""

import sys

from .cli import main

sys.exit(main())
