"""The worker process: a plain pyzmq loop that runs the handler (no Twisted, no dispatcher).

L{__main__}: its entry point (``python -m gaspar_tw.worker``); L{loop}: receive work, run
the handler, send replies; L{relay}: the thread that links a remote worker to its producer.
"""
