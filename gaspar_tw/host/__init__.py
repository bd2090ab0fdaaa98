"""The worker host (``twistd gaspar-worker``): worker processes on this machine that serve a
remote producer's C{--bind} address."""
