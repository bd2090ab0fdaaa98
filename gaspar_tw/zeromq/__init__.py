"""ZeroMQ helpers both ends of a worker link use (plain pyzmq, no Twisted).

L{multipart}: multipart messages sent and received cheaply; L{curve}: CURVE keys and the
handshake monitor that makes a failed handshake a log line.
"""
