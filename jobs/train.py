"""Entry points for Ray jobs, e.g.

    ray job submit --working-dir . -- python jobs/train.py SHARDS -o s3://bucket/checkpoints --workers 4 --gpu
    ray job submit --working-dir . -- python jobs/train.py prepare DATASET... -o s3://bucket/shards

Same flags as `dfbatch train` / `dfbatch prepare`; the first argument `prepare` selects the latter.
"""

import sys

from dfbatch.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["prepare"]:
        sys.exit(main(args))
    sys.exit(main(["train", *(args[1:] if args[:1] == ["train"] else args)]))
