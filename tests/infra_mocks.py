"""Pulumi mock runtime for the infra tests: records every resource and answers the invokes.

``run_program(fn, config=...)`` runs ``fn`` (which declares resources) under fresh mocks and
returns a :class:`Run` with every registration: type, name, inputs, parent and the options
tests care about (protect, retain_on_delete, delete_before_replace, ignore_changes,
dependencies).
"""

import asyncio
import base64
import gzip
import importlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.sync_await import _sync_await

REGION = "us-east-1"
REGION_AZS = ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d")
ACCOUNT = "123456789012"
# Values the mocked providers produce for secrets: none may leak into user-data or plain outputs.
SECRET_MARK = "MOCKSECRET"



def moto_offerings(region: str = REGION) -> dict[str, set[str]]:
    """AZ -> instance types EC2 offers there: AWS's own DescribeInstanceTypeOfferings data as moto ships it."""
    import os

    import moto

    path = os.path.join(os.path.dirname(moto.__file__), "ec2", "resources", "instance_type_offerings",
                        "availability-zone", f"{region}.json.gz")
    offered: dict[str, set[str]] = {}
    for entry in json.loads(gzip.decompress(open(path, "rb").read())):
        offered.setdefault(entry["Location"], set()).add(entry["InstanceType"])
    return offered


# What getInstanceTypeOfferings answers (a test may take a type out of an AZ).
OFFERINGS = {zone: types for zone, types in moto_offerings().items() if zone in REGION_AZS}

# Network interfaces already in the existing subnets: id -> subnet, addresses, tags, description.
EXISTING_ENIS: dict[str, dict[str, Any]] = {}

# Existing network the getVpc/getSubnet invokes know about.
EXISTING_VPC: dict[str, Any] = {"id": "vpc-0123456789abcdef0", "cidr_block": "10.9.0.0/16",
                                "enable_dns_support": True, "enable_dns_hostnames": True}
# AWS's managed prefix list of S3 in REGION (getPrefixList).
S3_PREFIX_LIST = "pl-63a5400a"
# Endpoints the given VPC already has: service name -> (type, private DNS). getVpcEndpoint fails
# for any other service, as AWS's invoke does when nothing matches.
EXISTING_VPC_ENDPOINTS: dict[str, tuple[str, bool]] = {}
EXISTING_SUBNETS = {
    "subnet-0000000000000000a": ("us-east-1a", "10.9.0.0/24"),
    "subnet-0000000000000000b": ("us-east-1b", "10.9.1.0/24"),
    "subnet-0000000000000000c": ("us-east-1c", "10.9.2.0/24"),
    "subnet-0000000000000000f": ("us-east-1b", "10.9.3.0/28"),
}


@dataclass
class Registration:
    """One RegisterResource call as the engine would see it."""

    type: str
    name: str
    urn: str
    custom: bool
    parent: str
    inputs: dict[str, Any]
    protect: bool
    retain_on_delete: bool
    delete_before_replace: bool
    ignore_changes: list[str]
    dependencies: list[str]
    # Top-level inputs the program marked secret (their values are unwrapped in ``inputs``).
    secret_inputs: set[str] = field(default_factory=set)


@dataclass
class Run:
    """What a mocked program run declared and invoked."""

    resources: list[Registration] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    result: Any = None

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Registration:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        assert len(found) == 1, f"expected one {type_} {name}, found {len(found)}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.resources if r.urn == urn)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _result_fields(token: str) -> list[str]:
    """Output field names (wire, camelCase) of an aws invoke's result type, from the SDK."""
    _, path, function = token.split(":")
    module = path.split("/")[0]
    base = "pulumi_aws" if module == "index" else f"pulumi_aws.{module}"
    mod = importlib.import_module(f"{base}.{_snake(function)}")
    cls = getattr(mod, function[0].upper() + function[1:] + "Result")
    params = cls.__init__.__code__.co_varnames[1:cls.__init__.__code__.co_argcount]
    return [_camel(p) for p in params]


class NotFound(Exception):
    """An invoke whose lookup matches nothing (the provider fails it)."""


class Recorder(pulumi.runtime.Mocks):
    """Answers resources with plausible outputs and records invokes."""

    def __init__(self, run: Run) -> None:
        self.run = run

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        name, inputs = args.name, dict(args.inputs)
        outputs: dict[str, Any] = dict(inputs)
        rid = f"{name}-id"
        kind = args.typ
        if kind == "random:index/randomPassword:RandomPassword":
            outputs["result"] = f"{SECRET_MARK}-pw-{name}"
        elif kind == "tls:index/privateKey:PrivateKey":
            outputs["privateKeyPem"] = f"-----BEGIN PRIVATE KEY-----\n{SECRET_MARK}-key-{name}\n-----END PRIVATE KEY-----\n"
            outputs["publicKeyPem"] = f"-----BEGIN PUBLIC KEY-----\npub-{name}\n-----END PUBLIC KEY-----\n"
        elif kind in ("tls:index/selfSignedCert:SelfSignedCert", "tls:index/locallySignedCert:LocallySignedCert"):
            outputs["certPem"] = f"-----BEGIN CERTIFICATE-----\ncert-{name}\n-----END CERTIFICATE-----\n"
        elif kind == "tls:index/certRequest:CertRequest":
            outputs["certRequestPem"] = f"-----BEGIN CERTIFICATE REQUEST-----\ncsr-{name}\n-----END CERTIFICATE REQUEST-----\n"
        elif kind == "aws:s3/bucket:Bucket":
            outputs["bucket"] = f"{inputs.get('bucketPrefix', name)}mock"
            outputs["arn"] = f"arn:aws:s3:::{outputs['bucket']}"
            rid = outputs["bucket"]
        elif kind == "aws:ec2transitgateway/instanceConnectEndpoint:InstanceConnectEndpoint":
            outputs["arn"] = f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance-connect-endpoint/eice-{name}"
        elif kind == "aws:kms/key:Key":
            outputs["keyId"] = f"key-{name}"
            outputs["arn"] = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-{name}"
        elif kind == "aws:iam/role:Role":
            outputs["name"] = f"{name}-mock"
            outputs["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{name}-mock"
        elif kind == "aws:iam/instanceProfile:InstanceProfile":
            outputs["name"] = f"{name}-mock"
        elif kind == "aws:secretsmanager/secret:Secret":
            outputs["arn"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}-AbCdEf"
            rid = outputs["arn"]
        elif kind == "aws:lb/loadBalancer:LoadBalancer":
            outputs["dnsName"] = f"{name}-0123.elb.{REGION}.amazonaws.com"
            outputs["zoneId"] = "Z26RNL4JYFTOTI"
            outputs["arn"] = f"arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:loadbalancer/net/{name}/1"
        elif kind == "aws:ec2/eip:Eip":
            outputs["publicIp"] = f"198.51.100.{sum(map(ord, name)) % 250 + 1}"
        elif kind == "aws:route53/zone:Zone":
            outputs["zoneId"] = f"Z-{name}"
        elif kind == "pulumi:pulumi:StackReference":
            # A source stack for branches: what stacks/regional.py exports.
            outputs["outputs"] = {"backupBucket": f"{name.split('/')[-1]}-backup-src", "clusterName": "pg-source",
                                  "backupKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/key-source"}
            if name.endswith("-encrypted"):
                # A source with backup.encryption also exports its cipher secret.
                outputs["outputs"]["backupCipherSecretArn"] = (
                    f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:pg-source-cipher-AbCdEf")
        elif kind.startswith("aws:"):
            outputs.setdefault("arn", f"arn:aws:mock:{REGION}:{ACCOUNT}:{name}")
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.run.calls.append((args.token, dict(args.args)))
        try:
            values = self._answer(args.token, args.args)
        except NotFound as missing:
            # What the engine makes of a provider's error: the invoke raises in the program.
            return {}, [("", str(missing))]  # type: ignore[return-value]
        if args.token.startswith("aws:"):
            values = {key: values.get(key) for key in _result_fields(args.token)} | values
        return values

    def _answer(self, token: str, given: dict[str, Any]) -> dict[str, Any]:
        if token == "aws:index/getRegion:getRegion":
            return {"region": REGION, "name": REGION, "id": REGION, "endpoint": f"ec2.{REGION}.amazonaws.com",
                    "description": "US East (N. Virginia)"}
        if token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"id": REGION, "names": list(REGION_AZS), "zoneIds": [f"use1-az{i}" for i in range(1, 5)],
                    "groupNames": [REGION] * 4, "state": given.get("state")}
        if token == "aws:ec2/getInstanceTypeOfferings:getInstanceTypeOfferings":
            zones = next((f["values"] for f in given.get("filters") or [] if f["name"] == "location"), REGION_AZS)
            pairs = [(t, z) for z in zones for t in sorted(OFFERINGS.get(z, ()))]
            return {"id": REGION, "instanceTypes": [t for t, _ in pairs], "locations": [z for _, z in pairs],
                    "locationTypes": ["availability-zone"] * len(pairs), "locationType": given.get("locationType")}
        if token == "aws:ec2/getNetworkInterfaces:getNetworkInterfaces":
            want = {f["name"]: set(f["values"]) for f in given.get("filters") or []}
            ids = [eni_id for eni_id, eni in sorted(EXISTING_ENIS.items())
                   if eni["subnetId"] in want.get("subnet-id", {eni["subnetId"]})
                   and set(eni["privateIps"]) & want.get("addresses.private-ip-address", set(eni["privateIps"]))]
            return {"id": REGION, "ids": ids}
        if token == "aws:ec2/getNetworkInterface:getNetworkInterface":
            eni = EXISTING_ENIS[given["id"]]
            return {"id": given["id"], "privateIp": eni["privateIps"][0], "privateIps": eni["privateIps"],
                    "subnetId": eni["subnetId"], "tags": eni.get("tags", {}), "description": eni.get("description", "")}
        if token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:user/test", "id": ACCOUNT, "userId": "AID"}
        if token == "aws:ec2/getAmi:getAmi":
            pattern = next(f["values"][0] for f in given["filters"] if f["name"] == "name")
            arch = next(f["values"][0] for f in given["filters"] if f["name"] == "architecture")
            image = f"ami-{'0a' if arch == 'arm64' else '0b'}{'0' * 15}"
            return {"id": image, "imageId": image, "architecture": arch,
                    "name": pattern.replace("*", "20250101-1234"), "ownerId": given["owners"][0]}
        if token == "aws:ec2/getVpc:getVpc":
            return {"id": given["id"], "cidrBlock": EXISTING_VPC["cidr_block"],
                    "enableDnsSupport": EXISTING_VPC["enable_dns_support"],
                    "enableDnsHostnames": EXISTING_VPC["enable_dns_hostnames"]}
        if token == "aws:ec2/getPrefixList:getPrefixList":
            assert given["name"] == f"com.amazonaws.{REGION}.s3", given
            return {"id": S3_PREFIX_LIST, "prefixListId": S3_PREFIX_LIST, "name": given["name"],
                    "cidrBlocks": ["3.5.0.0/19", "52.216.0.0/15"]}
        if token == "aws:ec2/getVpcEndpoint:getVpcEndpoint":
            if given["serviceName"] not in EXISTING_VPC_ENDPOINTS or given["vpcId"] != EXISTING_VPC["id"]:
                raise NotFound("no matching EC2 VPC Endpoint found")
            kind, private_dns = EXISTING_VPC_ENDPOINTS[given["serviceName"]]
            return {"id": f"vpce-{given['serviceName'].rsplit('.', 1)[1]}", "vpcId": given["vpcId"],
                    "serviceName": given["serviceName"], "vpcEndpointType": kind, "privateDnsEnabled": private_dns,
                    "state": "available"}
        if token == "aws:ec2/getSubnet:getSubnet":
            az, cidr = EXISTING_SUBNETS[given["id"]]
            return {"id": given["id"], "availabilityZone": az, "cidrBlock": cidr, "vpcId": EXISTING_VPC["id"]}
        raise AssertionError(f"unexpected invoke {token}")


class RecordingMonitor(MockMonitor):
    """A MockMonitor that also records the resource options of each registration."""

    def __init__(self, mocks: Recorder) -> None:
        super().__init__(mocks)
        self.run = mocks.run

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            inputs, _ = rpc.deserialize_properties_unwrap_secrets(request.object)
            secret_inputs = {key for key in request.object
                             if _is_secret_value(rpc.deserialize_property(request.object[key]))}
            self.run.resources.append(Registration(
                type=request.type, name=request.name, urn=response.urn, custom=request.custom,
                parent=request.parent, inputs=inputs, secret_inputs=secret_inputs,
                protect=bool(request.protect), retain_on_delete=bool(request.retainOnDelete),
                delete_before_replace=bool(request.deleteBeforeReplace),
                ignore_changes=list(request.ignoreChanges), dependencies=list(request.dependencies)))
        return response


def _is_secret_value(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def run_program(program: Callable[[], Any], *, config: dict[str, str] | None = None, stack: str = "dev",
                project: str = "pgha", region: str | None = REGION) -> Run:
    """Run ``program`` under fresh mocks with ``config`` (``aws:region`` added unless region=None)."""
    run = Run()
    recorder = Recorder(run)
    pulumi.runtime.set_mocks(recorder, project=project, stack=stack, preview=False,
                             monitor=RecordingMonitor(recorder))
    values = dict(config or {})
    if region is not None:
        values.setdefault("aws:region", region)
    pulumi.runtime.set_all_config(values)

    @pulumi.runtime.test
    def body() -> None:
        run.result = program()

    try:
        body()
    except Exception as exc:
        # Tests of failing programs still want to see what (if anything) was declared.
        exc.pgha_run = run  # type: ignore[attr-defined]
        raise
    return run


def resolve(output: Any) -> tuple[Any, bool]:
    """The value of a (resolved) Output and whether it is secret; call after ``run_program``."""
    out = pulumi.Output.from_input(output)

    async def both() -> tuple[Any, bool]:
        return await out.future(), await out.is_secret()

    return _sync_await(both())


def decode_user_data(user_data_base64: str) -> str:
    """The cloud-config text inside base64 + gzip user-data."""
    return gzip.decompress(base64.b64decode(user_data_base64)).decode()


def member_manifests(run: "Run") -> dict[str, dict[str, Any]]:
    """Each member's configuration manifest (the node-config bucket object's content), by member."""
    out = {}
    for obj in run.of_type("aws:s3/bucketObjectv2:BucketObjectv2"):
        key = resolve(obj.inputs["key"])[0]
        if "/node-config/" in key:
            out[key.rsplit("/", 1)[1].removesuffix(".json")] = json.loads(resolve(obj.inputs["content"])[0])
    return out


def member_files(run: "Run", member: str) -> dict[str, str]:
    """path -> text of every inline file of ``member``'s configuration."""
    return {e["path"]: e["content"] for e in member_manifests(run)[member]["files"] if "content" in e}


def summary(run: Run) -> list[tuple[str, str, str]]:
    """A comparable description of a run: (type, name, sorted inputs JSON) of every resource."""
    def stable(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)
    return sorted((r.type, r.name, stable(r.inputs)) for r in run.resources)


__all__ = ["ACCOUNT", "EXISTING_SUBNETS", "EXISTING_VPC", "REGION", "REGION_AZS", "Registration", "Run",
           "SECRET_MARK", "decode_user_data", "resolve", "run_program", "summary", "asyncio"]
