"""Where the producer's requests run, from the producer's side: worker sources.

L{local}: worker processes started here (C{spawnProcess}), replaced when they die;
L{remote}: workers on other hosts that connect to a ROUTER socket, with heartbeats;
L{channels}: the txZMQ sockets both use.
"""
