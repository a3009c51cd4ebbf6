"""What both exporters share: the HTTP server and metric families."""

import math
import signal
import threading
from typing import Any

from ..errors import LOG, AgentError


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise AgentError(f"--listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(collector, listen: tuple[str, int]) -> None:
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(listen[1], addr=listen[0], registry=registry)
    LOG.info("serving metrics on http://%s:%d/metrics", listen[0], listen[1])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    LOG.info("stopped")


def number(value: Any, scale: float = 1.0) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value) * scale
    except (TypeError, ValueError):
        return None

class Families:
    """Collects samples into metric families in first-seen order."""

    def __init__(self) -> None:
        self.families: dict[str, Any] = {}
        self.labelnames: dict[str, list[str]] = {}

    def add(self, name: str, kind: str, help_text: str, labels: dict[str, str], value: float | None) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if value is None or (isinstance(value, float) and math.isnan(value)):
            return
        fam = self.families.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = cls(name, help_text, labels=list(labels))
            self.families[name], self.labelnames[name] = fam, list(labels)
        fam.add_metric([labels[k] for k in self.labelnames[name]], value)

    def list(self) -> list:
        return list(self.families.values())


def rows_of(result: tuple[list[str], list[tuple]] | None) -> list[dict]:
    if not result:
        return []
    cols, rows = result
    return [dict(zip(cols, row)) for row in rows]


def label_text(value: Any) -> str:
    return "" if value is None else str(value)

