"""``python -m rcig ...`` is the ``rcig`` command (for environments without the script on PATH)."""

import sys

from rcig.cli import main

sys.exit(main())
