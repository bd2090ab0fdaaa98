"""What ``gaspar-tw`` is pointed at: a daemon's gaspar endpoint (bench) or metrics address (status).

Each function returns what to connect to, or raises C{ValueError} with one line saying what
was given and what a right value looks like.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from gaspar_tw.config import DEFAULT_PORT

#: The client endpoint types bench takes as they are, and what each looks like.
ENDPOINT_FORMS = {
    "tcp": "tcp:HOST:PORT (e.g. tcp:127.0.0.1:10123)",
    "unix": "unix:PATH (e.g. unix:/run/gaspar.sock)",
    "tls": "tls:HOST:PORT (e.g. tls:example.com:10123)",
    "ssl": "ssl:HOST:PORT (e.g. ssl:example.com:10123)",
}

_HOSTNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")
_MISSING = re.compile(r"missing \d+ required positional arguments?: (.*)")
_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_NOT_A_NUMBER = re.compile(r"invalid literal for int\(\) with base 10: ('.*')")


def is_host(text: str) -> bool:
    """A host name, an IPv4 address or an IPv6 address (no brackets)."""
    if _HOSTNAME.match(text):
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_port(text: str) -> tuple[str, int] | None:
    """C{HOST:PORT} or C{[IPV6]:PORT} as C{(host, port)}; None if C{text} is not one."""
    host, sep, port = text.rpartition(":")
    if not (sep and port.isdigit() and 0 < int(port) < 65536):
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host:
            return None
    return (host, int(port)) if is_host(host) else None


def gaspar_endpoint(target: str) -> tuple[str, str]:
    """bench's ENDPOINT as C{(Twisted client endpoint string, how to name it)}.

    A client endpoint string (``tcp:``, ``unix:``, ``tls:``, ``ssl:``) is taken as it is,
    ``HOST:PORT`` becomes ``tcp:HOST:PORT``, and a bare C{HOST} means the default port.
    """
    kind, sep, _ = target.partition(":")
    if sep and kind in ENDPOINT_FORMS:
        return target, target
    found = host_port(target)
    if found is None and is_host(target):
        found = (target, DEFAULT_PORT)
    if found is None:
        what = "the URL" if "://" in target else ""
        raise ValueError(
            f"ENDPOINT must look like HOST:PORT (e.g. 127.0.0.1:10123; port {DEFAULT_PORT}"
            f" if left out) or a Twisted client endpoint (e.g. tcp:127.0.0.1:10123,"
            f" unix:/run/gaspar.sock), not {what}{' ' if what else ''}{target!r}"
        )
    host, port = found
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "tcp:{}:{}".format(host.replace(":", "\\:"), port), shown


def client_endpoint(reactor, description: str):
    """C{clientFromString(reactor, description)}, its errors told in one line."""
    from twisted.internet.endpoints import clientFromString

    kind = description.partition(":")[0]
    form = ENDPOINT_FORMS.get(kind, "tcp:HOST:PORT (e.g. tcp:127.0.0.1:10123)")
    if kind == "unix" and description in ("unix:", "unix:path="):
        raise ValueError(f"endpoint {description!r} has no path: write {form}")
    try:
        return clientFromString(reactor, description)
    except TypeError as e:
        if missing := _MISSING.search(str(e)):
            names = " or ".join(re.findall(r"'(\w+)'", missing.group(1)))
            raise ValueError(f"endpoint {description!r} has no {names}: write {form}") from e
        if unexpected := _UNEXPECTED.search(str(e)):
            raise ValueError(
                f"endpoint {description!r} has an unknown option {unexpected.group(1)!r}:"
                f" write {form}"
            ) from e
        raise ValueError(f"endpoint {description!r} cannot be used ({e}): write {form}") from e
    except NameError as e:  # Twisted's TLS endpoints without pyOpenSSL
        raise ValueError(
            f"endpoint {description!r} needs pyOpenSSL: pip install 'twisted[tls]'"
        ) from e
    except ValueError as e:
        if literal := _NOT_A_NUMBER.search(str(e)):
            raise ValueError(
                f"endpoint {description!r} has {literal.group(1)} where a number goes: write {form}"
            ) from e
        raise ValueError(f"endpoint {description!r} cannot be used ({e}): write {form}") from e


def metrics_address(text: str) -> tuple[str, int]:
    """status's HOST:PORT as C{(host, port)}: C{HOST:PORT}, or the URL C{http://HOST:PORT/...}."""
    found = None
    if text.startswith("http://"):
        try:
            url = urlsplit(text)
            if url.hostname and url.port and is_host(url.hostname):
                found = (url.hostname, url.port)
        except ValueError:  # a port that is not a number
            pass
    elif text.partition(":")[0] not in (*ENDPOINT_FORMS, "tcp6"):  # not --metrics's own value
        found = host_port(text)
    if found is None:
        raise ValueError(
            "HOST:PORT must be the address of the daemon's --metrics port (e.g. 127.0.0.1:9100"
            f" for --metrics tcp:9100; there is no default), not {text!r}"
        )
    return found
