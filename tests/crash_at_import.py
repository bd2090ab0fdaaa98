"""A handler module that kills the importing process while ./crash-at-import exists.

The daemon imports it once at start (the file is absent then); a test creates the file to
make every new worker die at start, and removes it to let them come up again.
"""

import os

if os.path.exists("crash-at-import"):
    os._exit(1)


def echo(message: bytes) -> bytes:
    return message
