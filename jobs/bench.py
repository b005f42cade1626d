"""Entry point for `ray job submit -- python jobs/bench.py [-o OUT] [...]` (same flags as `dfbatch bench`)."""

import sys

from dfbatch.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
