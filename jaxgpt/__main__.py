"""`python -m jaxgpt ...` runs the jaxgpt command."""

import sys

from jaxgpt.cli import main

sys.exit(main())
