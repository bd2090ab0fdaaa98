"""The producer's front ends: the TCP protocols clients speak.

L{gaspar}: one request per connection (gaspar's format); L{framed}: pipelined requests on a
persistent connection; L{sendnow}: writing a reply in the turn it is ready; L{accept}:
running out of file descriptors, logged calmly.
"""
