"""``pgha:kubernetes`` under the mock runtime: the ScrapeConfigs, the PrometheusRule, the
applications' Secret (secret) and ExternalName Services; nothing Kubernetes (not even a provider)
without the key; bad input refused before anything is declared."""

import json
import runpy
from pathlib import Path
from typing import Any, Callable

import pytest

from infra_mocks import Run, resolve, run_program
from pgha.infra import PostgresCluster
from pgha.infra.kubernetes import SECRET_MOUNT
from pgha.observability import JOBS, cluster_alerts, scrape_targets
from pgha.spec import SERVICES, SpecError

ROOT = Path(__file__).resolve().parent.parent
SCRAPE = "kubernetes:monitoring.coreos.com/v1alpha1:ScrapeConfig"
RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
SECRET = "kubernetes:core/v1:Secret"
SERVICE = "kubernetes:core/v1:Service"
PROVIDER = "pulumi:providers:kubernetes"
OBSERVABILITY = "pgha:index:Observability"


def kubernetes_resources(run: Run) -> list[str]:
    return [r.type for r in run.resources if r.type.startswith(("kubernetes:", "pulumi:providers:kubernetes"))
            or r.type == OBSERVABILITY]


def main_program(config: dict[str, str]) -> Run:
    return run_program(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"), config=config)


def failing(program: Callable[[], Any], **kwargs: Any) -> tuple[SpecError, Run]:
    with pytest.raises(SpecError) as caught:
        run_program(program, **kwargs)
    return caught.value, caught.value.pgha_run  # type: ignore[attr-defined]


def component_run(kubernetes: dict[str, Any]) -> tuple[Run, PostgresCluster]:
    run = run_program(lambda: {"cluster": PostgresCluster("db", {"cluster_name": "pg-k8s",
                                                                  "kubernetes": kubernetes})})
    return run, run.result["cluster"]


def test_the_component_declares_monitoring_and_connection_objects() -> None:
    run, cluster = component_run({"namespace": "orders", "release": "monitoring"})
    (component,) = run.of_type("pgha:index:PostgresCluster")
    (obs,) = run.of_type(OBSERVABILITY)
    assert obs.parent == component.urn
    spec = cluster.spec
    member_ips, _ = resolve(cluster.member_ips)
    # No kubeconfig or context: the default provider.
    assert run.of_type(PROVIDER) == []

    scrapes = {r.inputs["metadata"]["name"]: r for r in run.of_type(SCRAPE)}
    assert set(scrapes) == {f"pg-k8s-{j.job}" for j in JOBS}
    for job in JOBS:
        scrape = scrapes[f"pg-k8s-{job.job}"]
        assert scrape.inputs["apiVersion"] == "monitoring.coreos.com/v1alpha1"
        assert scrape.inputs["kind"] == "ScrapeConfig" and scrape.parent == obs.urn
        assert scrape.inputs["metadata"]["namespace"] == "orders"
        assert scrape.inputs["metadata"]["labels"]["release"] == "monitoring"
        body = scrape.inputs["spec"]
        assert body["metricsPath"] == job.path and body["scrapeInterval"] == "30s"
        assert {"action": "replace", "targetLabel": "job", "replacement": job.job} in body["relabelings"]
        got = {(c["targets"][0], c["labels"]["ins"], c["labels"]["ip"], c["labels"]["cls"])
               for c in body["staticConfigs"]}
        want = {(t.address, t.member, t.ip, "pg-k8s") for t in scrape_targets(spec, member_ips) if t.job == job.job}
        assert got == want and len(got) == 3

    (rule,) = run.of_type(RULE)
    assert rule.inputs["apiVersion"] == "monitoring.coreos.com/v1" and rule.inputs["kind"] == "PrometheusRule"
    assert rule.inputs["metadata"]["labels"]["release"] == "monitoring"
    (group,) = rule.inputs["spec"]["groups"]
    names = [r["alert"] for r in group["rules"]]
    assert names == [a.name for a in cluster_alerts(spec)] and len(names) >= 15
    assert all({"severity", "cls"} <= set(r["labels"]) and {"summary", "description", "runbook"}
               <= set(r["annotations"]) for r in group["rules"])

    (secret,) = run.of_type(SECRET)
    assert secret.inputs["metadata"] == {"name": "pg-k8s-app", "namespace": "orders",
                                         "labels": {"app.kubernetes.io/managed-by": "pgha", "pgha/cluster": "pg-k8s"}}
    assert secret.inputs["type"] == "Opaque" and "stringData" in secret.secret_inputs
    data = secret.inputs["stringData"]
    password, is_secret = resolve(cluster.app_password)
    assert is_secret and data["password"] == password and data["username"] == "dbuser_app"
    assert data["ca.crt"] == resolve(cluster.ca_cert_pem)[0]
    for service in SERVICES:
        assert data[f"{service}_dsn"].startswith(f"postgresql://dbuser_app:{password}@pg-k8s-{service}:")
        assert data[f"{service}_dsn"].endswith(f"/app?sslmode=verify-full&sslrootcert={SECRET_MOUNT}/ca.crt")
    # In Kubernetes the password is in the Secret only (AWS keeps it in Secrets Manager).
    for r in run.resources:
        if r.type.startswith("kubernetes:") and r.type != SECRET:
            assert password not in json.dumps(r.inputs, default=str), r.type

    services = {r.inputs["metadata"]["name"]: r for r in run.of_type(SERVICE)}
    assert set(services) == {f"pg-k8s-{s}" for s in SERVICES}
    nlb, _ = resolve(cluster.nlb_dns_name)
    for r in services.values():
        assert r.inputs["spec"]["type"] == "ExternalName" and r.inputs["spec"]["externalName"] == nlb
        assert r.inputs["metadata"]["namespace"] == "orders"
    assert resolve(cluster.observability.alert_names)[0] == names


def test_a_kubeconfig_gets_a_provider_of_its_own() -> None:
    run, _ = component_run({"namespace": "mon", "kubeconfig": "/home/ops/.kube/team", "context": "prod"})
    (provider,) = run.of_type(PROVIDER)
    assert provider.inputs["kubeconfig"] == "/home/ops/.kube/team" and provider.inputs["context"] == "prod"
    (obs,) = run.of_type(OBSERVABILITY)
    assert provider.parent == obs.urn


def test_the_stack_program_declares_them_only_with_the_key() -> None:
    run = main_program({"pgha:kubernetes": json.dumps({"namespace": "apps"})})
    kinds = kubernetes_resources(run)
    assert kinds.count(SCRAPE) == len(JOBS) and kinds.count(RULE) == 1 and kinds.count(SECRET) == 1
    assert kinds.count(SERVICE) == len(SERVICES) and kinds.count(OBSERVABILITY) == 1
    assert kubernetes_resources(main_program({})) == []


BAD_KUBERNETES: list[tuple[dict[str, Any], str, str]] = [
    ({"namespace": "Apps"}, "pgha:kubernetes.namespace", "DNS-1123 label"),
    ({"namespace": "a" * 64}, "pgha:kubernetes.namespace", "DNS-1123 label"),
    ({"namespace": "apps", "colour": "blue"}, "pgha:kubernetes.colour", "unknown key"),
    ({"namespace": "apps", "scrapeInterval": "30 seconds"}, "pgha:kubernetes.scrapeInterval", "30s or 1m"),
    ({"namespace": "apps", "release": "kube prometheus"}, "pgha:kubernetes.release", "label value"),
    ({"namespace": "apps", "kubeconfig": "/tmp/x\nmore"}, "pgha:kubernetes.kubeconfig", "single line"),
    ({"release": "monitoring"}, "pgha:kubernetes.namespace", "is required"),
]


@pytest.mark.parametrize(("given", "key", "allowed"), BAD_KUBERNETES)
def test_bad_kubernetes_config_declares_nothing(given: dict[str, Any], key: str, allowed: str) -> None:
    error, run = failing(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"),
                         config={"pgha:kubernetes": json.dumps(given)})
    (problem,) = error.problems
    assert problem.key == key and allowed in problem.allowed, str(error)
    assert run.resources == []


def test_bad_kubernetes_args_declare_nothing() -> None:
    error, run = failing(lambda: PostgresCluster("db", {"kubernetes": {"namespace": "apps", "scrape_every": "1m"}}))
    (problem,) = error.problems
    assert problem.key == "kubernetes.scrape_every" and "scrape_interval" in problem.allowed
    assert run.resources == []


def test_dashboards_as_configmaps_for_the_sidecar() -> None:
    from pgha.observability.dashboards import dashboards

    run, cluster = component_run({"namespace": "orders"})
    (obs,) = run.of_type(OBSERVABILITY)
    maps = run.of_type("kubernetes:core/v1:ConfigMap")
    # Issue 13: at least six dashboards (overview, instance, replication, pooler, backups, queries).
    assert len(maps) >= 6
    assert {cm.inputs["metadata"]["name"] for cm in maps} == {
        f"pg-k8s-dashboard-{b}" for b in ("overview", "instance", "replication", "pooler", "backups", "queries")}
    served: dict[str, str] = {}
    for cm in maps:
        assert cm.parent == obs.urn
        assert cm.inputs["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm.inputs["metadata"]["namespace"] == "orders"
        (file_name, text), = cm.inputs["data"].items()
        served[file_name] = text
        model = json.loads(text)
        assert model["uid"] == f"pgha-{file_name.removesuffix('.json')}"
        assert len(model["panels"]) >= 5
        for panel in model["panels"]:
            assert panel["type"] in ("stat", "timeseries", "table") and panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert 'cls="pg-k8s"' in target["expr"], (panel["title"], target["expr"])
    assert served == dashboards(cluster.spec)
