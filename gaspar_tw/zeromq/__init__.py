"""ZeroMQ helpers both ends of a worker link use (plain pyzmq, no Twisted).

L{multipart}: multipart messages sent and received cheaply; L{curve}: CURVE keys and the
handshake monitor that makes a failed handshake a log line; L{exposure}: whether a worker
link is loopback or CURVE-protected (calls travel on no other).
"""
