"""``python -m stepkernel.walks replay-target TRACE WALK_ID`` (what ``stepkernel replay`` asks)."""

import sys

from .replaying import main

sys.exit(main(sys.argv[1:]))
