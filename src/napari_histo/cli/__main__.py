"""``python -m napari_histo.cli``."""

import sys

from . import main

sys.exit(main())
