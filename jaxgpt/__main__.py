"""`python -m jaxgpt ...` runs the jaxgpt command."""

import sys

from jaxgpt.cli.main import main

if __name__ == "__main__":  # not when a worker process of `jaxgpt prepare` re-imports the main module
    sys.exit(main())
