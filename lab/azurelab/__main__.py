"""``python -m azurelab up|down|reset|status|env`` (see :mod:`azurelab.labctl`)."""
import sys

from .labctl import main

sys.exit(main(sys.argv[1:]))
