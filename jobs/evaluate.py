"""Entry point for `ray job submit -- python jobs/evaluate.py ...` (same flags as `dfbatch evaluate`)."""

import sys

from dfbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
