"""Bytes on the wire, shared by every process: clients, producer, workers, worker hosts.

L{frames}: the C{[u32 length][body]} framing of both TCP protocols; L{framed}: the framed
protocol's requests and replies; L{messages}: what the producer and its workers send each
other over ZeroMQ; L{control}: their control words and exit statuses. Nothing here imports
Twisted or pyzmq.
"""
