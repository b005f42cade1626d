"""Entry point for `ray job submit -- python jobs/score.py SOURCE... --output OUT [...]` (same flags as `dfbatch score`)."""

import sys

from dfbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
