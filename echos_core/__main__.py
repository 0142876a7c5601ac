"""``python -m echos_core`` is the ``echos`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # (a spawned child process imports this module as __mp_main__: it must not run)
    sys.exit(main())
