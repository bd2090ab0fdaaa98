"""File descriptors: a higher limit in our own processes.

Each gaspar connection holds a file descriptor, and many systems start processes with a soft
C{RLIMIT_NOFILE} of 1,024. L{raise_file_limit} raises it to the hard limit, as nginx does;
twistd's C{gaspar} and C{gaspar-worker} (through L{OwnProcessServiceMaker}) and
L{gaspar_tw.Producer.start} call it (a program embedding a Producer may call it too). When
the limit is reached all the same, L{gaspar_tw.server.accept} keeps the log calm.
"""

from __future__ import annotations

import resource

from twisted.application.service import IService, ServiceMaker
from twisted.logger import Logger

log = Logger()


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; log and return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard or hard == resource.RLIM_INFINITY:
        log.info("file descriptor limit: {soft}", soft=soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError) as e:
        log.warn(
            "file descriptor limit stays {soft}: cannot raise it to {hard}: {error}",
            soft=soft,
            hard=hard,
            error=e,
        )
        return soft
    log.info("file descriptor limit raised from {soft} to {hard}", soft=soft, hard=hard)
    return hard


class OwnProcessServiceMaker(ServiceMaker):
    """A twistd plugin that has the process to itself: raise the file limit, then build."""

    def makeService(self, options) -> IService:
        raise_file_limit()
        return super().makeService(options)
