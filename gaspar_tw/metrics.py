"""The operator's HTTP port: Prometheus text at C{/metrics}, a JSON summary at C{/status},
health checks at C{/livez} and C{/readyz}.

The Prometheus page is prometheus-client's own Twisted resource over a private
C{CollectorRegistry}; its L{StatsCollector} reads the producer's L{Stats} only when scraped,
so serving requests never calls into prometheus-client.
"""

from __future__ import annotations

import json
import os
import time

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from gaspar_tw.proctitle import address_text
from gaspar_tw.stats import LATENCY_BUCKETS, OUTCOMES, RECYCLE_REASONS, RELOAD_OUTCOMES
from gaspar_tw.version import version

log = Logger()

PREFIX = "gaspar_tw_"


class StatsCollector(Collector):
    """Turn a pool's L{Stats} (and its dispatcher's queue lengths) into metric families."""

    def __init__(self, pool) -> None:
        self.pool = pool

    def collect(self):
        stats = self.pool.stats
        dispatcher = self.pool.dispatcher
        requests = CounterMetricFamily(
            PREFIX + "requests", "Requests finished, by outcome.", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            requests.add_metric([outcome], getattr(stats, outcome))
        yield requests
        yield GaugeMetricFamily(
            PREFIX + "requests_in_flight",
            "Requests accepted and not yet answered.",
            value=dispatcher.pending if dispatcher is not None else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "replies_unsent",
            "Replies a client has not taken yet; they count against --max-pending.",
            value=dispatcher.writing if dispatcher is not None else 0,
        )
        yield GaugeMetricFamily(
            PREFIX + "queue_depth",
            "Requests waiting for a worker with room.",
            value=dispatcher.queued if dispatcher is not None else 0,
        )
        counts = list(stats.latency_counts)
        cumulative, buckets = 0, []
        for bound, count in zip(LATENCY_BUCKETS, counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(
            PREFIX + "request_latency_seconds",
            "Time from submit to reply, for answered requests.",
            buckets=buckets,
            sum_value=stats.latency_sum,
        )
        yield CounterMetricFamily(
            PREFIX + "worker_restarts",
            "Worker processes started again after one ended unexpectedly.",
            value=stats.worker_restarts,
        )
        recycles = CounterMetricFamily(
            PREFIX + "worker_recycles",
            "Workers replaced on purpose (the replacement ready first), by reason.",
            labels=["reason"],
        )
        for reason in RECYCLE_REASONS:
            recycles.add_metric([reason], stats.recycles.get(reason, 0))
        yield recycles
        reloads = CounterMetricFamily(
            PREFIX + "reloads", "Reloads (SIGHUP), by outcome.", labels=["outcome"]
        )
        for outcome in RELOAD_OUTCOMES:
            reloads.add_metric([outcome], stats.reloads[outcome])
        yield reloads
        yield GaugeMetricFamily(
            PREFIX + "workers_configured",
            "Local worker processes configured (--workers, changed by SIGTTIN/SIGTTOU).",
            value=self.pool.workers,
        )
        workers = list(stats.workers.values())
        yield GaugeMetricFamily(
            PREFIX + "workers_alive", "Worker processes ready for work.", value=len(workers)
        )
        served = CounterMetricFamily(
            PREFIX + "worker_requests",
            "Requests answered by the current worker process in each slot.",
            labels=["slot"],
        )
        for worker in sorted(workers, key=lambda w: w.slot):
            served.add_metric([str(worker.slot)], worker.served)
        yield served
        yield GaugeMetricFamily(
            PREFIX + "start_time_seconds",
            "When the producer started, in seconds since the epoch.",
            value=stats.started,
        )


def status(producer) -> dict:
    """What C{/status} shows: the producer, its workers and its counters (reactor thread)."""
    stats = producer.stats
    now = time.time()
    workers = [
        {
            "where": info.where,
            "slot": info.slot,
            "pid": info.pid,
            "ready": info.ready_at is not None,
            "served": info.served,
            "uptime": round(now - info.ready_at, 3) if info.ready_at is not None else 0.0,
        }
        for info in producer.workerInfo()
    ]
    port = producer.port
    return {
        "version": version(),
        "pid": os.getpid(),
        "handler": producer.consumer.spec,
        "address": address_text(port.getHost()) if port is not None else None,
        "started": stats.started,
        "uptime": round(now - stats.started, 3),
        "pending": producer.dispatcher.pending,
        "queued": producer.dispatcher.queued,
        "unsent": producer.dispatcher.writing,
        "workers_configured": producer.workers,
        "workers_alive": len(stats.workers),
        "workers_remote": sum(1 for worker in workers if worker["where"] != "local"),
        "worker_restarts": stats.worker_restarts,
        "worker_recycles": dict(stats.recycles),
        "reloads": dict(stats.reloads),
        "requests": stats.outcomes(),
        "workers": workers,
    }


class StatusResource(Resource):
    """C{GET /status}: L{status} as JSON."""

    isLeaf = True

    def __init__(self, producer) -> None:
        super().__init__()
        self.producer = producer

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(status(self.producer), indent=1).encode() + b"\n"


class Readiness:
    """Whether C{producer} should get traffic: C{None} when ready, else a one-line reason.

    Ready means listening (if it has a port) with at least one worker, local or remote,
    ready. Before the producer first became ready, the reason says how far it got.
    """

    def __init__(self, producer) -> None:
        self.producer = producer
        self.started = False
        producer.whenReady().addCallbacks(self._ready, lambda _: None)

    def _ready(self, _) -> None:
        self.started = True

    def problem(self) -> str | None:
        producer = self.producer
        framed = getattr(producer, "framedFactory", None)
        if framed is not None and framed.draining:  # set by the drain, cleared by a start
            return "draining"
        if getattr(producer, "endpoint", None) is not None and producer.port is None:
            return "not listening"
        ready = sum(1 for info in producer.workerInfo() if info.ready_at is not None)
        if ready:
            return None
        if not self.started:
            return f"starting: 0 of {producer.workers} workers ready"
        return "no worker ready"


class HealthResource(Resource):
    """A health check: 200 and C{ok} when C{problem()} is C{None}, else 503 and the problem
    (text/plain, one line)."""

    isLeaf = True

    def __init__(self, problem, healthy: bytes = b"ok") -> None:
        super().__init__()
        self.problem = problem
        self.healthy = healthy

    def render_GET(self, request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        problem = self.problem()
        if problem is None:
            return self.healthy + b"\n"
        request.setResponseCode(503)
        return problem.encode() + b"\n"


class MetricsSite(Site):
    """A Site that does not log every scrape."""

    noisy = False

    def log(self, request) -> None:
        pass


def metricsSite(producer) -> Site:
    """C{/metrics} (Prometheus text), C{/status} (JSON), C{/livez} (200 while the reactor
    serves it) and C{/readyz} (L{Readiness}) for C{producer}."""
    from prometheus_client.twisted import MetricsResource  # imports the global reactor

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(producer))
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"status", StatusResource(producer))
    root.putChild(b"livez", HealthResource(lambda: None))
    root.putChild(b"readyz", HealthResource(Readiness(producer).problem, b"ready"))
    return MetricsSite(root)


class MetricsService(service.Service):
    """Serve L{metricsSite} on a server endpoint string (e.g. ``tcp:9100``) while running."""

    def __init__(self, producer, endpoint: str) -> None:
        self.producer = producer
        self.endpoint = endpoint
        self.port: IListeningPort | None = None
        self._listening = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening:
            return
        self._listening = True
        reactor = self.producer.reactor
        if reactor is None:  # the producer has not chosen one yet: the global one, now
            from twisted.internet import reactor
        endpoint = serverFromString(reactor, self.endpoint)
        failures: list = []
        d = endpoint.listen(metricsSite(self.producer))
        d.addCallbacks(self._listened, failures.append)
        if failures:  # port in use, bad address: fail at start, loudly
            failures[0].raiseException()

    def _listened(self, port: IListeningPort) -> None:
        self.port = port
        log.info(
            "gaspar_tw metrics on http://{address}/metrics (status: /status; health: /livez,"
            " /readyz)",
            address=address_text(port.getHost()),
        )

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        self._listening = False
        if port is not None:
            return port.stopListening()
        return None
