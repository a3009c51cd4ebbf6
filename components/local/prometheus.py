"""A real Prometheus on the host scraping the local cluster with the configuration pgha
generates (``pgha.observability.prometheus_config`` and ``rules_yaml``): the exporters are
reached at the members' addresses on the bridge, as a monitoring host in ``monitoringCidrs``
reaches them on EC2.

It lives in a temporary directory under the cluster's root (so a cut-off run's process is found
and ended by the next wipe of that root), listens on 127.0.0.1 only, and is stopped by its pid.
"""

import json
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping

from ..observability import prometheus_config, rules_yaml
from .cluster import LocalCluster
from .process import Daemon

# Short enough that a test sees a target, a rate() and an alert's state change within seconds.
SCRAPE_INTERVAL = "2s"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or its API answered with an error."""


def member_ips(cluster: LocalCluster) -> dict[str, str]:
    return {node.member.name: node.ip for node in cluster.nodes}


class LocalPrometheus:
    """One Prometheus process: ``start()``, the HTTP API, ``stop()``."""

    def __init__(self, cluster: LocalCluster, *, port: int, extra_rules: Mapping[str, str] | None = None,
                 scrape_interval: str = SCRAPE_INTERVAL) -> None:
        self.cluster = cluster
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.cluster.root.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix="prometheus-", dir=cluster.root))
        rules = {"pgha-rules.yml": rules_yaml(cluster.spec), **(extra_rules or {})}
        for name, text in rules.items():
            (self.dir / name).write_text(text)
        # The very file a Prometheus of one's own gets (README "Monitoring"), rule files beside it.
        self.config_file = self.dir / "prometheus.yml"
        self.config_file.write_text(prometheus_config(cluster.spec, member_ips(cluster),
                                                      scrape_interval=scrape_interval,
                                                      rule_files=tuple(str(self.dir / n) for n in rules)))
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("prometheus is missing: scripts/setup.sh installs Debian's prometheus package")
        self.daemon = Daemon("prometheus", [
            binary, f"--config.file={self.config_file}", f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
        ], self.dir)

    def start(self, timeout: float = 60.0) -> None:
        self.daemon.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.daemon.running():
                raise PrometheusError(f"prometheus exited:\n{self.daemon.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        raise PrometheusError(f"prometheus not ready on {self.url} within {timeout:.0f} s:\n{self.daemon.log_tail()}")

    def stop(self) -> None:
        self.daemon.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer."""
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        try:
            with urllib.request.urlopen(url, timeout=30) as answer:
                body = json.load(answer)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples; a scalar as one sample without labels)."""
        data = self.api("query", query=expr, **({"time": at} if at is not None else {}))
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        return list(self.api("query_range", query=expr, start=start, end=end, step=step)["result"])

    def label_values(self, selector: str | None, label: str) -> list[str]:
        """The values ``label`` takes (on the series ``selector`` matches; None: on any), as Grafana's
        ``label_values`` asks for them."""
        if selector is None:
            return [str(v) for v in self.api(f"label/{label}/values")]
        return sorted({s[label] for s in self.api("series", **{"match[]": selector}) if label in s})

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])
