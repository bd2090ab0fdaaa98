"""Running gaspar_tw: the C{gaspar-tw} command, its load generator, logs, limits, SIGTERM.

L{cli}: ``gaspar-tw status|bench|keygen``; L{targets}: the addresses it is given;
L{loadgen}: the load engine of ``bench``; L{logs}: ``--log-format json``; L{limits}: the
open-files limit; L{shutdown}: SIGTERM drains under twistd.
"""
