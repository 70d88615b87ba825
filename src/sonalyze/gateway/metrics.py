"""Prometheus metrics of one gateway process (``GET /metrics``), in a registry of its own per app.

Nothing here runs per delivery: a broadcast is counted once with the number of connections it reached.
Event names are client-chosen, so at most ``MAX_EVENT_LABELS`` distinct names become label values; the
rest count as ``other``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MAX_EVENT_LABELS = 200
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.connections = Gauge("gateway_connections", "Open WebSocket connections", registry=registry)
        self.devices = Gauge("gateway_devices", "Devices with at least one connection", registry=registry)
        self.events_in = Counter(
            "gateway_events_in_total", "Client events by event and result (ok or the error code)", ["event", "result"], registry=registry
        )
        self.events_out = Counter("gateway_events_out_total", "Pushes published by this instance, by event", ["event"], registry=registry)
        self.upstream_latency = Histogram(
            "gateway_upstream_latency_seconds", "Upstream /gateway/handle round trips by service", ["service"],
            buckets=LATENCY_BUCKETS_S, registry=registry,
        )
        self.deliveries = Counter(
            "gateway_broadcast_deliveries_total", "Connections written to by local deliveries, by target kind", ["kind"], registry=registry
        )
        self.local_broadcasts = Counter(
            "gateway_broadcasts_delivered_total", "Publications delivered locally, by target kind", ["kind"], registry=registry
        )
        self.rate_limited = Counter("gateway_rate_limited_total", "Refused for rate, by scope", ["scope"], registry=registry)
        self.disconnects = Counter("gateway_disconnects_total", "Connections closed by the gateway, by reason", ["reason"], registry=registry)
        self.broker_connected = Gauge("gateway_broker_connected", "1 while the broker reaches the other instances", ["kind"], registry=registry)
        self.resumes = Counter("gateway_resumes_total", "Resumes by outcome (replayed or resync_required)", ["outcome"], registry=registry)
        self.replayed = Counter("gateway_replayed_pushes_total", "Kept pushes written to resuming connections", registry=registry)
        self.outage_queue = Gauge("gateway_outage_queue", "Publications queued while the broker is down (redis with a history)", registry=registry)
        self.outage_dropped = Gauge(
            "gateway_outage_queue_dropped", "Publications dropped from a full outage queue since the start", registry=registry
        )
        self._events: set[str] = set()
        self._events_in_by_label: dict[tuple[str, str], Any] = {}
        """``events_in`` children by (event label, result): ``labels()`` costs more than the increment."""
        self._latency_by_url: dict[str, Any] = {}

    def watch(self, connections: Callable[[], int], devices: Callable[[], int], broker_kind: str, broker_connected: Callable[[], bool]) -> None:
        """Gauges read when scraped, not kept up to date on every change."""
        self.connections.set_function(connections)
        self.devices.set_function(devices)
        self.broker_connected.labels(broker_kind).set_function(lambda: float(broker_connected()))

    def event_label(self, event: str | None) -> str:
        if event is None:
            return "-"
        if event in self._events:
            return event
        if len(self._events) < MAX_EVENT_LABELS:
            self._events.add(event)
            return event
        return "other"

    def event_in(self, event: str | None, result: str) -> None:
        labels = (self.event_label(event), result)
        child = self._events_in_by_label.get(labels)
        if child is None:
            child = self._events_in_by_label[labels] = self.events_in.labels(*labels)
        child.inc()
        if result == "rate_limited":
            self.rate_limited.labels("connection").inc()

    def counting(self, deliver: Callable[[Any, bytes], tuple[int, int]]) -> Callable[[Any, bytes], tuple[int, int]]:
        """``deliver`` (targets, payload) counted once per publication, by target kind."""
        children = {
            kind: (self.local_broadcasts.labels(kind), self.deliveries.labels(kind)) for kind in ("devices", "channels", "all")
        }

        def counted(targets: Any, payload: bytes) -> tuple[int, int]:
            delivered, devices = deliver(targets, payload)
            if targets.join is not None or targets.leave is not None:
                return delivered, devices  # a membership change, not a message
            kind = "devices" if targets.device_ids is not None else "channels" if targets.channels is not None else "all"
            broadcasts, deliveries = children[kind]
            broadcasts.inc()
            deliveries.inc(delivered)
            return delivered, devices

        return counted

    def upstream_latency_for(self, url: str, names: dict[str, str]) -> Any:
        """The latency histogram of the upstream at ``url`` (labelled by service name, else host:port)."""
        child = self._latency_by_url.get(url)
        if child is None:
            name = next((name for name, base in names.items() if base == url), None) or urlsplit(url).netloc
            child = self._latency_by_url[url] = self.upstream_latency.labels(name)
        return child
