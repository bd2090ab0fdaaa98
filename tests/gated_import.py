"""A handler module whose import waits, in worker processes only, until ./release-workers
exists (the producer and its import check load it at once)."""

import os
import sys
import time

if sys.argv[0].endswith(os.path.join("gaspar_tw", "worker", "__main__.py")):
    while not os.path.exists("release-workers"):
        time.sleep(0.02)


def slow(message: bytes) -> bytes:
    """Sleep for the seconds in the request, then echo it."""
    time.sleep(float(message or b"0"))
    return message
