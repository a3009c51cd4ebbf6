"""pgha as a Pulumi package for other languages (``pgha.infra.provider``, PulumiPlugin.yaml).

Without the CLI: Pulumi's own component provider analyses both components; the schema it builds
(with the stack config's input names) is a golden file; ``construct`` with camelCase inputs and
float numbers, as a TypeScript or YAML program sends them, declares what the Python API declares
for the same args; the examples use only names the schema has; PulumiPlugin.yaml's entry point
serves that schema over gRPC, as the engine asks for it in ``pulumi package add``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

import grpc
import pytest
import yaml
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.server import ComponentInitError
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from infra_mocks import Run, resolve, run_program, summary
from pgha.infra import PostgresCluster
from pgha.infra.cluster import TYPE_TOKEN
from pgha.infra.kubernetes import TYPE_TOKEN as OBSERVABILITY
from pgha.infra.provider import COMPONENTS, PACKAGE, TYPE_NAMES, PghaProvider, package_schema, package_version
from pgha.spec import SpecError, schema

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "schema" / "pgha.json"
INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
SCRAPE = "kubernetes:monitoring.coreos.com/v1alpha1:ScrapeConfig"


def name_drift(package: Mapping[str, Any], type_names: Mapping[str, str] = TYPE_NAMES) -> list[str]:
    """How the schema's input names disagree with the stack config's (spec.schema), both ways."""
    drift = []
    inputs = package["resources"][TYPE_TOKEN]["inputProperties"]
    places = {"PostgresCluster": (inputs, schema.TOP),
              **{g.args_class: (package["types"][f"{PACKAGE}:index:{type_names[g.args_class]}"]["properties"], g)
                 for g in schema.GROUPS.values()}}
    for where, (properties, group) in places.items():
        want = [f.key for f in group.fields]
        drift += [f"{where}.{name}: not a config key" for name in properties if name not in want]
        drift += [f"{where}.{key}: config key missing" for key in want if key not in properties]
    return drift


def test_pulumis_component_provider_analyses_both_components() -> None:
    # Pulumi's provider as is: it used to fail on `args: X | None` ('types.UnionType' ... '__mro__').
    plain = json.loads(ComponentProvider(list(COMPONENTS), PACKAGE, None, "0.1.0").schema)
    assert set(plain["resources"]) == {TYPE_TOKEN, OBSERVABILITY}
    assert plain["resources"][TYPE_TOKEN]["isComponent"] is True
    # Its own camel-casing misses the config's spelling: exactly what PghaProvider corrects.
    assert sorted(name_drift(plain, {n: n for n in TYPE_NAMES})) == ["StorageArgs.sizeGiB: config key missing",
                                         "StorageArgs.sizeGib: not a config key",
                                         "StorageArgs.throughputMiBps: config key missing",
                                         "StorageArgs.throughputMibps: not a config key"]


def test_schema_inputs_carry_the_stack_config_names() -> None:
    package = package_schema()
    assert name_drift(package) == []
    assert package["name"] == PACKAGE and package["version"] == package_version()
    outputs = package["resources"][TYPE_TOKEN]["properties"]
    assert {"endpoints", "memberIps", "nlbDnsName", "caCertPem", "appPassword"} <= set(outputs)
    # The TypedDict docstrings become the SDKs' docs, default included.
    storage = package["types"][f"{PACKAGE}:index:Storage"]["properties"]
    assert "(default 100)" in storage["sizeGiB"]["description"]
    # SDK generators append Args to input types; Go names a resource's args <Resource>Args in the same
    # package, so no type may be called that (Observability's cluster input was PostgresClusterArgs).
    types = {token.rsplit(":", 1)[1] for token in package["types"]}
    resources = {token.rsplit(":", 1)[1] for token in package["resources"]}
    assert types == set(TYPE_NAMES.values())
    assert not {t for t in types if t.endswith("Args")} and not types & resources
    text = json.dumps(package)
    refs = set(re.findall(r'"\$ref": "#/types/([^"]+)"', text))
    assert refs == set(package["types"])
    # Descriptions quote the schema's names, not Python's (``vpc_id`` reads ``vpcId``).
    quoted = set(re.findall(r"``(\w+)``", text))
    python_names = {f.arg for g in [schema.TOP, *schema.GROUPS.values()] for f in g.fields if f.arg != f.key}
    assert "vpcId" in quoted and not quoted & (python_names | {"member_ips", "nlb_dns_name"})


def test_schema_matches_golden() -> None:
    text = json.dumps(package_schema(), indent=2, sort_keys=True) + "\n"
    if os.environ.get("PGHA_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.read_text() == text, "schema changed: regenerate with PGHA_UPDATE_GOLDEN=1 and review the diff"


def wire(value: Any) -> Any:
    """``value`` as the engine delivers it: every number a float."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def snake(inputs: Mapping[str, Any], group: schema.Group = schema.TOP) -> dict[str, Any]:
    """The Python API's args for camelCase ``inputs`` (spec.schema's key -> arg names)."""
    out = {}
    for key, value in inputs.items():
        f = group.field(key)
        out[f.arg] = snake(value, f.group) if f.group is not None else value
    return out


def construct(token: str, inputs: Mapping[str, Any]) -> tuple[Run, dict[str, Any]]:
    provider = PghaProvider()
    run = run_program(lambda: provider.construct("db", token, wire(dict(inputs)), None))
    return run, run.result.state


TS_ARGS = re.compile(r"/\* args \*/(.*?)/\* end args \*/", re.S)


def typescript_args() -> dict[str, Any]:
    """The args literal of examples/typescript/index.ts (a YAML flow mapping, as it is written)."""
    found = TS_ARGS.search((ROOT / "examples/typescript/index.ts").read_text())
    assert found, "examples/typescript/index.ts: no /* args */ ... /* end args */ literal"
    return yaml.safe_load(found.group(1))


def yaml_args() -> dict[str, Any]:
    program = yaml.safe_load((ROOT / "examples/yaml/Pulumi.yaml").read_text())
    (resource,) = [r for r in program["resources"].values() if r["type"] == "pgha:PostgresCluster"]
    return resource["properties"]


@pytest.mark.parametrize("example", ["typescript", "yaml"])
def test_construct_with_camel_case_inputs_declares_the_cluster(example: str) -> None:
    inputs = typescript_args() if example == "typescript" else yaml_args()
    assert inputs["storage"]["sizeGiB"] == 50  # the examples' spelling reaches the component
    run, state = construct(TYPE_TOKEN, inputs)
    assert len(run.of_type(INSTANCE)) == 3
    volumes = run.of_type(VOLUME)
    assert [(v.inputs["size"], v.inputs["throughput"]) for v in volumes] == [(50, 250)] * 3
    endpoints, _ = resolve(state["endpoints"])
    assert sorted(endpoints["members"]) == ["pg-orders-1", "pg-orders-2", "pg-orders-3"]
    assert set(resolve(state["memberIps"])[0]) == set(endpoints["members"])
    assert resolve(state["appPassword"])[1], "appPassword must stay a secret across the provider"
    # The same cluster as the Python API declares from the snake_case args.
    python = run_program(lambda: PostgresCluster("db", snake(inputs)))  # type: ignore[arg-type]
    assert summary(run) == summary(python)


def test_construct_refuses_bad_input_before_declaring_anything() -> None:
    provider = PghaProvider()
    with pytest.raises(ComponentInitError) as caught:
        run_program(lambda: provider.construct("db", TYPE_TOKEN, {"replicas": 2.5, "storage": {"sizeGiB": 0.0}},
                                               None))
    error = caught.value.inner
    assert isinstance(error, SpecError)
    # Each key as the program spelled it, not the Python name (storage.size_gib).
    assert str(error).splitlines()[1:] == ["  - storage.sizeGiB = 0: must be an integer from 1 to 65536 GiB for gp3",
                                           "  - replicas = 2.5: must be an integer from 0 to 5"]
    assert caught.value.pgha_run.resources == []  # type: ignore[attr-defined]


def scrape_addresses(run: Run) -> set[str]:
    return {t.split(":")[0] for r in run.of_type(SCRAPE) for c in r.inputs["spec"]["staticConfigs"]
            for t in c["targets"]}


def test_construct_observability_from_a_clusters_outputs() -> None:
    cluster = {"clusterName": "pg-k8s", "kubernetes": {"namespace": "apps"}}
    outputs = {"nlbDnsName": "nlb.example", "caCertPem": "CA", "appPassword": "pw"}
    # The cluster's own member IPs, as its memberIps output has them.
    python = run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-k8s"}))
    ips = {r.inputs["tags"]["pgha:member"]: r.inputs["privateIps"][0]
           for r in python.of_type("aws:ec2/networkInterface:NetworkInterface")}
    run, state = construct(OBSERVABILITY, {"cluster": cluster, "memberIps": ips, **outputs})
    assert resolve(state["namespace"])[0] == "apps"
    assert scrape_addresses(run) == set(ips.values()) and len(ips) == 3
    assert run.of_type(INSTANCE) == []  # monitoring objects only, no second cluster
    # A VPC pgha creates: the same IPs without memberIps (a TypeScript program need not unwrap an Output).
    planned, _ = construct(OBSERVABILITY, {"cluster": cluster, **outputs})
    assert scrape_addresses(planned) == set(ips.values())


def test_observability_without_the_clusters_outputs_declares_nothing() -> None:
    provider = PghaProvider()
    given_vpc = {"clusterName": "pg-k8s", "kubernetes": {"namespace": "apps"},
                 "network": {"vpcId": "vpc-0123456789abcdef0",
                             "subnetIds": ["subnet-0000000000000000a", "subnet-0000000000000000b",
                                           "subnet-0000000000000000c"]}}
    with pytest.raises(ComponentInitError) as caught:
        run_program(lambda: provider.construct("obs", OBSERVABILITY, {"cluster": given_vpc, "caCertPem": "CA"},
                                               None))
    assert str(caught.value) == ("Observability needs the cluster's outputs: missing member_ips of exactly "
                                 "pg-k8s-1, pg-k8s-2, pg-k8s-3; nlb_dns_name; app_password")
    assert caught.value.pgha_run.resources == []  # type: ignore[attr-defined]


def schema_drift(value: Any, properties: Mapping[str, Any], types: Mapping[str, Any], where: str) -> list[str]:
    """Keys of ``value`` (an example's inputs) that the schema's ``properties`` do not have, nested."""
    drift = []
    for key, item in value.items():
        prop = properties.get(key)
        if prop is None:
            drift.append(f"{where}{key}")
        elif "$ref" in prop and isinstance(item, dict):
            nested = types[prop["$ref"].removeprefix("#/types/")]["properties"]
            drift += schema_drift(item, nested, types, f"{where}{key}.")
    return drift


def test_examples_use_only_input_names_in_the_schema() -> None:
    package = package_schema()
    inputs = package["resources"][TYPE_TOKEN]["inputProperties"]
    for args in (typescript_args(), yaml_args()):
        assert schema_drift(args, inputs, package["types"], "") == []
    # The checker sees a Python name in an example.
    assert schema_drift({"storage": {"size_gib": 1}}, inputs, package["types"], "") == ["storage.size_gib"]
    outputs = package["resources"][TYPE_TOKEN]["properties"]
    program = yaml.safe_load((ROOT / "examples/yaml/Pulumi.yaml").read_text())
    used = {m for v in program["outputs"].values() for m in re.findall(r"\$\{orders\.(\w+)\}", v)}
    ts = (ROOT / "examples/typescript/index.ts").read_text()
    used |= set(re.findall(r"cluster\.(\w+)", ts))
    assert used and used <= set(outputs)


def test_plugin_serves_the_schema_as_the_engine_asks_for_it(tmp_path: Path) -> None:
    manifest = yaml.safe_load((ROOT / "PulumiPlugin.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"
    main = ROOT / manifest["main"]
    # Not the root __main__.py: that is the pgha program.
    assert main.is_file() and main != ROOT / "__main__.py"
    # As the Python language host runs a plugin: `python <main> <engine address>`, printing its port.
    # The engine address is only read when a program constructs; GetSchema is what package add asks.
    plugin = subprocess.Popen([sys.executable, str(main), "127.0.0.1:1"], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert plugin.stdout is not None
        port = plugin.stdout.readline().strip()
        assert port.isdigit(), plugin.communicate(timeout=60)[1][-4000:]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = provider_pb2_grpc.ResourceProviderStub(channel)
            answer = stub.GetSchema(provider_pb2.GetSchemaRequest(version=0), timeout=120)
        assert json.loads(answer.schema) == json.loads(GOLDEN.read_text())
    finally:
        plugin.terminate()
        plugin.wait(timeout=60)
