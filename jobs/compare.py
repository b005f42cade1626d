"""Entry point for `ray job submit -- python jobs/compare.py ...` (same flags as `dfbatch compare`)."""

import sys

from dfbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
