"""A handler module whose import never ends; it leaves its pid in ./hang-at-import.pid."""

import os
import time

with open("hang-at-import.pid", "w") as f:
    f.write(str(os.getpid()))
while True:
    time.sleep(0.1)


def echo(message: bytes) -> bytes:  # pragma: no cover - never reached
    return message
