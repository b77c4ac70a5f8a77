"""``python -m dtkd``: see :mod:`dtkd.cli`."""
import sys

from .cli import main

sys.exit(main())
