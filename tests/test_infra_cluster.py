"""PostgresCluster under Pulumi mocks: what it declares for each shape of cluster."""

import json
from collections import Counter
from typing import Any

import pytest

from infra_mocks import REGION_AZS, Run, decode_user_data, resolve, run_program
from pgha.infra import PostgresCluster
from pgha.spec import Member, member_ip

INSTANCE = "aws:ec2/instance:Instance"
VOLUME = "aws:ebs/volume:Volume"
ATTACHMENT = "aws:ec2/volumeAttachment:VolumeAttachment"
ENI = "aws:ec2/networkInterface:NetworkInterface"

SHAPES = {
    ("arm64", "ebs"): "r8g.large",
    ("arm64", "metal"): "r7gd.large",
    ("x86_64", "ebs"): "r7i.large",
    ("x86_64", "metal"): "r6id.large",
}


def cluster(args: dict[str, Any], name: str = "db") -> Run:
    return run_program(lambda: PostgresCluster(name, args))


def _member(index: int) -> Member:
    return Member(f"m{index}", index, "", 0, True)


def instances_by_member(run: Run) -> dict[str, Any]:
    return {r.inputs["tags"]["pgha:member"]: r for r in run.of_type(INSTANCE)}


@pytest.mark.parametrize(("arch", "kind"), list(SHAPES))
def test_shapes_declare_the_right_resources(arch: str, kind: str) -> None:
    storage: dict[str, Any] = {"kind": kind}
    if kind == "ebs":
        storage |= {"volume_type": "gp3", "size_gib": 200, "iops": 6000, "throughput_mibps": 500}
    run = cluster({"cluster_name": "pg-shape", "arch": arch, "instance_type": SHAPES[(arch, kind)],
                   "storage": storage})
    instances = run.of_type(INSTANCE)
    assert len(instances) == 3
    for inst in instances:
        assert inst.inputs["instanceType"] == SHAPES[(arch, kind)]
        assert inst.inputs["ami"] == ("ami-0a" if arch == "arm64" else "ami-0b") + "0" * 15
        assert inst.ignore_changes == []  # the image the spec says, also when newer than in state
        assert inst.delete_before_replace
        assert inst.inputs["userDataReplaceOnChange"] is True
        assert "primaryNetworkInterface" in inst.inputs and "subnetId" not in inst.inputs
    ami_calls = [args for token, args in run.calls if token == "aws:ec2/getAmi:getAmi"]
    names = {f["values"][0] for call in ami_calls for f in call["filters"] if f["name"] == "name"}
    assert names == {f"debian-13-{'arm64' if arch == 'arm64' else 'amd64'}-*"}
    assert all(call["owners"] == ["136693071363"] and call["mostRecent"] for call in ami_calls)

    volumes = run.of_type(VOLUME)
    attachments = run.of_type(ATTACHMENT)
    if kind == "metal":
        assert volumes == [] and attachments == []
    else:
        assert len(volumes) == 3 and len(attachments) == 3
        for vol in volumes:
            assert (vol.inputs["type"], vol.inputs["size"], vol.inputs["iops"], vol.inputs["throughput"]) == \
                ("gp3", 200, 6000, 500)
            assert vol.inputs["encrypted"] is True and vol.inputs["kmsKeyId"].startswith("arn:aws:kms:")
            assert vol.protect and vol.retain_on_delete
        assert {a.inputs["deviceName"] for a in attachments} == {"/dev/sdf"}
        # Each volume sits in the AZ of the member it is attached to.
        azs = {v.inputs["tags"]["pgha:member"]: v.inputs["availabilityZone"] for v in volumes}
        assert azs == {"pg-shape-1": "us-east-1a", "pg-shape-2": "us-east-1b", "pg-shape-3": "us-east-1c"}


def test_io2_volume() -> None:
    run = cluster({"cluster_name": "pg-io2", "storage": {"kind": "ebs", "volume_type": "io2", "size_gib": 100,
                                                          "iops": 20000}})
    vol = run.of_type(VOLUME)[0]
    assert (vol.inputs["type"], vol.inputs["size"], vol.inputs["iops"]) == ("io2", 100, 20000)
    assert "throughput" not in vol.inputs


def test_members_spread_over_azs_with_fixed_ips() -> None:
    run = cluster({"cluster_name": "pg-az"})
    enis = {r.inputs["tags"]["pgha:member"]: r for r in run.of_type(ENI)}
    subnets = {r.name: r for r in run.of_type("aws:ec2/subnet:Subnet")}
    azs = []
    for index, member in enumerate(sorted(enis), start=1):
        eni = enis[member]
        subnet = next(s for s in subnets.values() if s.urn and eni.inputs["subnetId"] == f"{s.name}-id")
        azs.append(subnet.inputs["availabilityZone"])
        assert eni.inputs["privateIps"] == [member_ip(subnet.inputs["cidrBlock"], _member(index))]
    assert len(set(azs)) == 3
    ips, _ = resolve(run.result.member_ips)
    assert ips == {"pg-az-1": "10.42.0.11", "pg-az-2": "10.42.16.12", "pg-az-3": "10.42.32.13"}


def test_five_replicas_spread_over_three_azs() -> None:
    run = cluster({"cluster_name": "pg-six", "replicas": 5})
    member_azs, _ = resolve(run.result.member_azs)
    assert Counter(member_azs.values()) == {"us-east-1a": 2, "us-east-1b": 2, "us-east-1c": 2}
    ips, _ = resolve(run.result.member_ips)
    assert len(set(ips.values())) == 6
    assert len(run.of_type(INSTANCE)) == 6


def test_resource_names_are_unique() -> None:
    run = cluster({"cluster_name": "pg-names", "replicas": 5})
    urns = [r.urn for r in run.resources]
    assert len(urns) == len(set(urns))
    names = Counter(r.name for r in run.resources)
    assert [n for n, c in names.items() if c > 1] == []


def test_two_clusters_in_one_program_do_not_collide() -> None:
    def program() -> None:
        PostgresCluster("a", {"cluster_name": "pg-a"})
        PostgresCluster("b", {"cluster_name": "pg-b", "network": {"vpc_cidr": "10.43.0.0/16"}})

    run = run_program(program)
    assert len({r.urn for r in run.resources}) == len(run.resources)


READY = "pulumi-python:dynamic/pgha:MemberReady"


def test_rolling_order_replicas_first_primary_last_each_after_the_previous_is_ready() -> None:
    run = cluster({"cluster_name": "pg-roll", "replicas": 3})
    inst = instances_by_member(run)
    attach = {r.name: r for r in run.of_type(ATTACHMENT)}
    ready = {r.inputs["parameter_name"].split("/")[3]: r for r in run.of_type(READY)}
    assert sorted(ready) == sorted(inst)
    urn_of = {name: r.urn for name, r in inst.items()}
    for member, r in ready.items():
        # The wait is for this member's instance, once its data volume is attached.
        assert r.inputs["parameter_name"] == f"/pgha/pg-roll/{member}/status"
        assert r.inputs["instance_id"] == f"{inst[member].name}-id" and r.inputs["region"] == "us-east-1"
        # What EC2 applies by restarting the instance: a change waits for the member again.
        assert r.inputs["restarted_by"] == f"instance_type={inst[member].inputs['instanceType']}"
        assert urn_of[member] in r.dependencies
        assert any(a.urn in r.dependencies for a in attach.values() if a.name.startswith(inst[member].name[:-9]))
    # member k waits for member k+1 to be ready; member 4 waits for no member.
    assert not any(r.urn in inst["pg-roll-4"].dependencies for r in ready.values())
    for k in (3, 2, 1):
        deps = inst[f"pg-roll-{k}"].dependencies
        assert ready[f"pg-roll-{k + 1}"].urn in deps
        assert all(urn_of[f"pg-roll-{j}"] not in deps for j in range(1, k + 1))


def test_protected_and_retained_data() -> None:
    run = cluster({"cluster_name": "pg-keep"})
    bucket = run.one("aws:s3/bucket:Bucket", "db-backup-bucket")
    key = run.of_type("aws:kms/key:Key")[0]
    assert bucket.protect and bucket.retain_on_delete and bucket.inputs["forceDestroy"] is False
    assert key.protect and key.retain_on_delete and key.inputs["enableKeyRotation"] is True
    for type_ in ("BucketPublicAccessBlock", "BucketVersioning", "BucketServerSideEncryptionConfiguration",
                  "BucketPolicy", "BucketLifecycleConfiguration"):
        # The backup bucket's (the log bucket has its own, retained too: test_infra_least_privilege).
        found = [r for r in run.resources if r.type.endswith(f":{type_}") and r.name.startswith("db-backup-")]
        assert len(found) == 1 and found[0].retain_on_delete, type_


def test_lifecycle_never_expires_current_objects() -> None:
    run = cluster({"cluster_name": "pg-life", "backup": {"retention_days": 30}})
    (rule,) = run.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
                      "db-backup-lifecycle").inputs["rules"]
    assert rule["status"] == "Enabled"
    assert rule["noncurrentVersionExpiration"]["noncurrentDays"] > 30
    assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] > 0
    assert set(rule.get("expiration", {})) <= {"expiredObjectDeleteMarker"}
    assert not rule.get("transitions")


def test_versioning_and_kms_encryption() -> None:
    run = cluster({"cluster_name": "pg-enc"})
    versioning = run.of_type("aws:s3/bucketVersioning:BucketVersioning")[0]
    assert versioning.inputs["versioningConfiguration"]["status"] == "Enabled"
    (rule,) = run.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
                      "db-backup-sse").inputs["rules"]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:")
    assert rule["bucketKeyEnabled"] is True


def test_endpoints_nlb_and_dns() -> None:
    run = cluster({"cluster_name": "pg-ep"})
    nlb = run.of_type("aws:lb/loadBalancer:LoadBalancer")[0]
    assert nlb.inputs["internal"] is True and nlb.inputs["loadBalancerType"] == "network"
    assert nlb.inputs["enableCrossZoneLoadBalancing"] is True and len(nlb.inputs["subnets"]) == 3
    groups = run.of_type("aws:lb/targetGroup:TargetGroup")
    assert sorted(g.inputs["port"] for g in groups) == [5433, 5434, 5436, 5438]
    for g in groups:
        assert g.inputs["targetType"] == "ip" and g.inputs["protocol"] == "TCP"
        assert g.inputs["healthCheck"]["protocol"] == "TCP" and g.inputs["healthCheck"]["port"] == "traffic-port"
    listeners = run.of_type("aws:lb/listener:Listener")
    assert sorted(listener.inputs["port"] for listener in listeners) == [5433, 5434, 5436, 5438]
    targets = run.of_type("aws:lb/targetGroupAttachment:TargetGroupAttachment")
    ips, _ = resolve(run.result.member_ips)
    assert len(targets) == 12 and {t.inputs["targetId"] for t in targets} == set(ips.values())
    zone = run.of_type("aws:route53/zone:Zone")[0]
    assert zone.inputs["name"] == "pg-ep.pgha.internal" and len(zone.inputs["vpcs"]) == 1
    records = {r.inputs["name"]: r.inputs for r in run.of_type("aws:route53/record:Record")}
    for member, ip in ips.items():
        assert records[f"{member}.pg-ep.pgha.internal"]["records"] == [ip]
    for service in ("primary", "replica", "default", "offline"):
        alias = records[f"pg-ep-{service}.pg-ep.pgha.internal"]["aliases"][0]
        assert alias["name"].endswith(".elb.us-east-1.amazonaws.com")
    endpoints, secret = resolve(run.result.endpoints)
    assert not secret and endpoints["services"]["primary"] == "pg-ep-primary.pg-ep.pgha.internal:5433"


def test_created_vpc_nat_modes() -> None:
    per_az = cluster({"cluster_name": "pg-nat"})
    single = cluster({"cluster_name": "pg-nat", "network": {"nat_gateways": "single"}})
    assert len(per_az.of_type("aws:ec2/natGateway:NatGateway")) == 3
    assert len(single.of_type("aws:ec2/natGateway:NatGateway")) == 1
    cidrs = sorted(s.inputs["cidrBlock"] for s in per_az.of_type("aws:ec2/subnet:Subnet"))
    assert cidrs == sorted(["10.42.0.0/20", "10.42.16.0/20", "10.42.32.0/20", "10.42.48.0/20", "10.42.64.0/20",
                            "10.42.80.0/20"])
    assert all(s.inputs["mapPublicIpOnLaunch"] is False for s in per_az.of_type("aws:ec2/subnet:Subnet"))


def test_existing_vpc_uses_looked_up_subnets() -> None:
    run = cluster({"cluster_name": "pg-byo", "network": {
        "vpc_id": "vpc-0123456789abcdef0",
        "subnet_ids": ["subnet-0000000000000000a", "subnet-0000000000000000b", "subnet-0000000000000000c"]}})
    assert run.of_type("aws:ec2/vpc:Vpc") == [] and run.of_type("aws:ec2/natGateway:NatGateway") == []
    ips, _ = resolve(run.result.member_ips)
    assert ips == {"pg-byo-1": "10.9.0.11", "pg-byo-2": "10.9.1.12", "pg-byo-3": "10.9.2.13"}
    enis = {r.inputs["tags"]["pgha:member"]: r.inputs for r in run.of_type(ENI)}
    assert enis["pg-byo-2"]["subnetId"] == "subnet-0000000000000000b"
    # Default client source is the VPC CIDR of the looked-up VPC.
    sources = {r.inputs.get("cidrIpv4") for r in run.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")}
    assert "10.9.0.0/16" in sources


def test_pinned_ami_is_not_looked_up() -> None:
    run = cluster({"cluster_name": "pg-ami", "ami_id": "ami-0123456789abcdef0"})
    assert not [c for c in run.calls if c[0] == "aws:ec2/getAmi:getAmi"]
    for inst in run.of_type(INSTANCE):
        assert inst.inputs["ami"] == "ami-0123456789abcdef0" and inst.ignore_changes == []


OBJECT = "aws:s3/bucketObjectv2:BucketObjectv2"


def manifests_by_member(run: Run) -> dict[str, dict[str, Any]]:
    """Each member's configuration manifest, as the bucket object's content declares it."""
    out = {}
    for obj in run.of_type(OBJECT):
        if "/node-config/" in obj.inputs["key"]:
            out[obj.inputs["key"].rsplit("/", 1)[1].removesuffix(".json")] = json.loads(obj.inputs["content"])
    return out


def file_text(manifest: dict[str, Any], suffix: str) -> str:
    return next(e["content"] for e in manifest["files"] if e["path"].endswith(suffix))


def test_user_data_names_the_configuration_and_the_manifest_carries_the_node_context() -> None:
    run = cluster({"cluster_name": "pg-ud"})
    ips, _ = resolve(run.result.member_ips)
    bucket, _ = resolve(run.result.bucket_name)
    secret_arn, _ = resolve(run.result.secret_arn)
    manifests = manifests_by_member(run)
    assert sorted(manifests) == sorted(ips)
    for inst in run.of_type(INSTANCE):
        member = inst.inputs["tags"]["pgha:member"]
        text = decode_user_data(inst.inputs["userDataBase64"])
        assert text.startswith("#cloud-config")
        # Where the configuration is, and nothing of what it holds.
        assert bucket in text and f"pg-ud/node-config/{member}.json" in text
        assert secret_arn not in text and "/etc/pgha/patroni.yml" not in text and "scope:" not in text
        node_json = json.loads(file_text(manifests[member], "/etc/pgha/node.json"))
        assert node_json["secret"]["id"] == secret_arn and node_json["ip"] == ips[member]
        # The member boots only once its manifest is there.
        config = next(o for o in run.of_type(OBJECT) if o.inputs["key"] == f"pg-ud/node-config/{member}.json")
        assert config.urn in inst.dependencies
    key_arn, _ = resolve(run.result.backup_key_arn)
    for obj in run.of_type(OBJECT):
        assert obj.inputs["key"].startswith("pg-ud/")
        # The cluster's own key: "aws:kms" alone would be the account's aws/s3 key.
        assert obj.inputs["serverSideEncryption"] == "aws:kms" and obj.inputs["kmsKeyId"] == key_arn


def test_each_ebs_node_looks_for_its_own_data_volume() -> None:
    run = cluster({"cluster_name": "pg-vol"})
    volumes = {v.inputs["tags"]["pgha:member"]: v for v in run.of_type("aws:ebs/volume:Volume")}
    assert len(volumes) == 3
    for member, manifest in manifests_by_member(run).items():
        text = file_text(manifest, "/bin/pgha-host")
        own = f'volume="{volumes[member].name}-id"'
        assert own in text, f"{member} does not look for its own volume"
        assert all(f'volume="{v.name}-id"' not in text for m, v in volumes.items() if m != member)


# What `pulumi up` would replace an instance for: its replace-triggering inputs.
REPLACING_INPUTS = ("userDataBase64", "ami", "instanceType", "primaryNetworkInterface", "iamInstanceProfile",
                    "rootBlockDevice", "metadataOptions")
ROUTINE_CHANGES = {
    "a PostgreSQL parameter": {"parameters": {"work_mem": "64MB", "max_connections": 500}},
    "a backup schedule": {"backup": {"full_schedule": "0 3 * * 0", "incr_schedule": "0 * * * *"}},
    "backup retention": {"backup": {"retention_days": 30}},
    "the pool mode": {"pool_mode": "session"},
    "the rto preset": {"rto": "safe"},
    "a third member": {"replicas": 2},
}


@pytest.mark.parametrize("change", sorted(ROUTINE_CHANGES))
def test_a_routine_change_reaches_the_manifest_and_replaces_no_instance(change: str) -> None:
    base = {"cluster_name": "pg-roll", "replicas": 1, "rpo": 0}
    before = cluster(base)
    after = cluster({**base, **ROUTINE_CHANGES[change]})
    old, new = instances_by_member(before), instances_by_member(after)
    assert set(old) <= set(new)
    for member, inst in old.items():
        for key in REPLACING_INPUTS:
            assert new[member].inputs.get(key) == inst.inputs.get(key), f"{change} changes {member}'s {key}"
    # ... and it did change something: the members' configuration.
    old_manifests, new_manifests = manifests_by_member(before), manifests_by_member(after)
    assert any(old_manifests[m]["version"] != new_manifests[m]["version"] for m in old_manifests), change


def test_a_boot_time_change_does_replace_instances() -> None:
    # The converse, so the test above can fail: the instance type is a boot-time fact.
    base = {"cluster_name": "pg-roll", "instance_type": "r8g.large"}
    old = instances_by_member(cluster(base))
    new = instances_by_member(cluster({**base, "instance_type": "r8g.xlarge"}))
    assert all(new[m].inputs["instanceType"] != old[m].inputs["instanceType"] for m in old)


def test_region_from_provider_when_not_configured() -> None:
    run = run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-reg"}), region=None)
    tokens = [c[0] for c in run.calls]
    assert "aws:index/getRegion:getRegion" in tokens
    azs = [c[1] for c in run.calls if c[0] == "aws:index/getAvailabilityZones:getAvailabilityZones"][0]
    assert azs["state"] == "available"
    member_azs, _ = resolve(run.result.member_azs)
    assert set(member_azs.values()) == set(REGION_AZS[:3])



def test_every_annotated_output_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    import typing

    import pulumi

    registered: dict[str, Any] = {}
    original = PostgresCluster.register_outputs

    def capture(self: PostgresCluster, outputs: dict[str, Any]) -> None:
        registered.update(outputs)
        original(self, outputs)

    monkeypatch.setattr(PostgresCluster, "register_outputs", capture)
    run_program(lambda: PostgresCluster("db", {"cluster_name": "pg-out", "backup": {"encryption": True}}))
    annotated = {name for name, hint in PostgresCluster.__annotations__.items()
                 if pulumi.Output in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint)))}
    assert {"backup_key_arn", "backup_cipher_secret_arn"} <= annotated
    assert set(registered) == annotated
