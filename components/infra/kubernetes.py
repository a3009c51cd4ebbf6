"""``Observability``: the cluster's monitoring and connection objects in the team's Kubernetes.

Declared by ``PostgresCluster`` when ``kubernetes`` is set (``pgha:kubernetes``), as its child;
a program of its own may declare it from a cluster's outputs too. It declares:

- one Prometheus Operator ``ScrapeConfig`` (monitoring.coreos.com/v1alpha1) per exporter kind:
  static targets, one per member, each with its own ``cls``/``ins``/``ip`` labels (the scrape
  model, ``pgha.observability.scrape``). Chosen over ServiceMonitor + Endpoints: the members are
  outside the cluster, and a ServiceMonitor needs a Service and a hand-made Endpoints object per
  exporter and cannot label each address with its member without relabelling on addresses;
- the ``PrometheusRule`` of the generated alerts (monitoring.coreos.com/v1);
- Grafana's six dashboards (``pgha.observability.dashboards``, grafanalib), a ConfigMap each,
  labelled ``grafana_dashboard: "1"`` for Grafana's sidecar;
- for applications, a Secret with each service's DSN and the CA certificate, and an
  ``ExternalName`` Service per service (``pg-name-primary``, ...) pointing at the NLB's DNS name,
  so pods connect by an in-cluster name that the members' certificates carry.

Both custom resources carry the ``release`` label kube-prometheus-stack's selectors match.
"""

from typing import Any, Mapping, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from ..observability import JOBS, rule_groups
from ..observability.dashboards import dashboards
from ..observability.scrape import static_configs
from ..render.files import APP_DATABASE, USERS
from ..spec import PORTS, SERVICES, ClusterSpec
from .cluster import PostgresClusterArgs, spec_of
from .network import planned_member_ips

TYPE_TOKEN = "pgha:index:Observability"
# Where an application mounts the Secret: the DSNs' sslrootcert points into it.
SECRET_MOUNT = "/etc/pgha-client"


def dsn(spec: ClusterSpec, service: str, password: str) -> str:
    """A libpq URI for ``service`` by its in-cluster name, verified against the cluster CA (each
    member's certificate carries the bare service names)."""
    user = USERS["app"]
    return (f"postgresql://{user}:{password}@{spec.service_name(service)}:{PORTS[service]}/{APP_DATABASE}"
            f"?sslmode=verify-full&sslrootcert={SECRET_MOUNT}/ca.crt")


class ObservabilityArgs(TypedDict, total=False):
    """Inputs of ``Observability``: the cluster's own inputs and four of its outputs."""

    cluster: PostgresClusterArgs
    """The cluster's inputs as given to ``PostgresCluster``, ``kubernetes`` included (it says where the
    objects go); validated like the cluster's. Not needed when ``PostgresCluster`` declares it."""
    member_ips: Mapping[str, str]
    """The cluster's ``member_ips`` output (member -> fixed private IP); required with ``network.vpc_id``.
    (default the IPs the cluster's own VPC gives its members)"""
    nlb_dns_name: pulumi.Input[str]
    """The cluster's ``nlb_dns_name`` output: where the ExternalName Services point."""
    ca_cert_pem: pulumi.Input[str]
    """The cluster's ``ca_cert_pem`` output, put in the applications' Secret."""
    app_password: pulumi.Input[str]
    """The cluster's ``app_password`` output (a secret), put in the applications' Secret."""


class Observability(pulumi.ComponentResource):
    """ScrapeConfigs, the PrometheusRule, the applications' Secret and ExternalName Services."""

    namespace: pulumi.Output[str]
    """The namespace the objects are in."""
    secret_name: pulumi.Output[str]
    """Name of the applications' Secret (keys ``<service>_dsn``, ``ca.crt``, ``username``, ``password``, ``database``)."""
    service_names: pulumi.Output[dict[str, str]]
    """Service -> the in-cluster name of its ExternalName Service."""
    alert_names: pulumi.Output[list[str]]
    """The alerts of the PrometheusRule."""

    # ``args`` a plain TypedDict for Pulumi's component analyser (see PostgresCluster); ``spec=`` when
    # PostgresCluster declares it, having validated it already.
    def __init__(self, name: str, args: ObservabilityArgs = ObservabilityArgs(),
                 opts: pulumi.ResourceOptions | None = None, *, spec: ClusterSpec | None = None) -> None:
        if spec is None:
            spec = spec_of(args.get("cluster") or PostgresClusterArgs(), opts)
        member_ips = args.get("member_ips") or (planned_member_ips(spec) if spec.network.creates_vpc else {})
        missing = [key for key in ("nlb_dns_name", "ca_cert_pem", "app_password") if key not in args]
        if set(member_ips) != {m.name for m in spec.members}:
            missing.insert(0, f"member_ips of exactly {', '.join(m.name for m in spec.members)}")
        if missing:
            raise ValueError(f"Observability needs the cluster's outputs: missing {'; '.join(missing)}")
        kube = spec.kubernetes
        if kube is None:
            raise ValueError("Observability needs a spec with kubernetes set (pgha:kubernetes)")
        super().__init__(TYPE_TOKEN, name, None, opts)
        this = pulumi.ResourceOptions(parent=self)
        if kube.kubeconfig or kube.context:
            provider = k8s.Provider(f"{name}-provider", kubeconfig=kube.kubeconfig, context=kube.context,
                                    opts=this)
            this = pulumi.ResourceOptions(parent=self, provider=provider)
        cluster = spec.cluster_name
        labels = {"app.kubernetes.io/managed-by": "pgha", "pgha/cluster": cluster}
        selected = {**labels, "release": kube.release}

        def meta(object_name: str, extra: Mapping[str, str] = labels) -> dict[str, Any]:
            return {"name": object_name, "namespace": kube.namespace, "labels": dict(extra)}

        for job in JOBS:
            targets = static_configs(spec, member_ips, job.job)
            if not targets:
                continue
            k8s.apiextensions.CustomResource(
                f"{name}-scrape-{job.job}", api_version="monitoring.coreos.com/v1alpha1", kind="ScrapeConfig",
                metadata=meta(f"{cluster}-{job.job}", selected),
                spec={"staticConfigs": targets, "metricsPath": job.path, "scheme": "HTTP",
                      "scrapeInterval": kube.scrape_interval,
                      # job is the exporter kind, as the alerts select it (the operator's default
                      # would be scrapeConfig/<namespace>/<name>).
                      "relabelings": [{"action": "replace", "targetLabel": "job", "replacement": job.job}]},
                opts=this)
        groups = rule_groups(spec)
        k8s.apiextensions.CustomResource(
            f"{name}-rules", api_version="monitoring.coreos.com/v1", kind="PrometheusRule",
            metadata=meta(f"{cluster}-alerts", selected), spec=groups, opts=this)

        def object_meta(object_name: str) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(name=object_name, namespace=kube.namespace, labels=dict(labels))

        def secret_data(values: list[Any]) -> dict[str, str]:
            password, ca = str(values[0]), str(values[1])
            return {**{f"{s}_dsn": dsn(spec, s, password) for s in SERVICES}, "ca.crt": ca,
                    "username": USERS["app"], "password": password, "database": APP_DATABASE}

        # A Pulumi secret: the password stays encrypted in the state and out of every plain output.
        string_data: pulumi.Output[dict[str, str]] = pulumi.Output.secret(
            pulumi.Output.all(args["app_password"], args["ca_cert_pem"]).apply(secret_data))
        k8s.core.v1.Secret(f"{name}-app", metadata=object_meta(f"{cluster}-app"), type="Opaque",
                                    string_data=string_data, opts=this)
        for service in SERVICES:
            k8s.core.v1.Service(
                f"{name}-{service}", metadata=object_meta(spec.service_name(service)),
                spec=k8s.core.v1.ServiceSpecArgs(
                    type="ExternalName", external_name=args["nlb_dns_name"],
                    ports=[k8s.core.v1.ServicePortArgs(name="postgres", port=PORTS[service], protocol="TCP")]),
                opts=this)

        # Grafana's dashboard sidecar (kube-prometheus-stack) loads ConfigMaps with this label; one
        # per dashboard keeps each well under a ConfigMap's 1 MiB and lets one change alone.
        for file_name, text in dashboards(spec).items():
            board = file_name.removeprefix(f"{cluster}-").removesuffix(".json")
            k8s.core.v1.ConfigMap(
                f"{name}-dashboard-{board}",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{cluster}-dashboard-{board}", namespace=kube.namespace,
                                                    labels={**labels, "grafana_dashboard": "1"}),
                data={file_name: text}, opts=this)

        self.namespace = pulumi.Output.from_input(kube.namespace)
        self.secret_name = pulumi.Output.from_input(f"{cluster}-app")
        self.service_names = pulumi.Output.from_input(
            {s: f"{spec.service_name(s)}.{kube.namespace}.svc" for s in SERVICES})
        self.alert_names = pulumi.Output.from_input([r["alert"] for r in groups["groups"][0]["rules"]])
        self.register_outputs({"namespace": self.namespace, "secret_name": self.secret_name,
                               "service_names": self.service_names, "alert_names": self.alert_names})
