"""The validated spec: defaults, derived members, and every class of bad input."""

import pytest

from pgha.spec import SpecError, build_spec, member_ip

AZS = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"]


def spec_of(values, **kw):
    return build_spec(values, stack=kw.pop("stack", "dev"), region="us-east-1", region_azs=kw.pop("azs", AZS), **kw)


def problems_of(values, **kw):
    with pytest.raises(SpecError) as info:
        spec_of(values, **kw)
    return {p.key: p for p in info.value.problems}, str(info.value)


def test_defaults_follow_the_documented_table():
    spec = spec_of({})
    assert spec.cluster_name == "pg-dev"
    assert (spec.arch, spec.instance_type, spec.replicas, spec.postgres_version) == ("arm64", "r8g.large", 2, 17)
    assert (spec.profile, spec.rto, spec.rpo, spec.stack_kind) == ("oltp", "norm", 0, "regional")
    assert (spec.storage.kind, spec.storage.size_gib, spec.storage.volume_type) == ("ebs", 100, "gp3")
    assert spec.availability_zones == ("us-east-1a", "us-east-1b", "us-east-1c")
    assert spec.synchronous and spec.backup.retention_days == 14


def test_members_get_pigsty_names_and_distinct_azs():
    spec = spec_of({"replicas": 5, "clusterName": "pg-orders"})
    names = [m.name for m in spec.members]
    assert names == [f"pg-orders-{i}" for i in range(1, 7)]
    assert len({m.availability_zone for m in spec.members[:3]}) == 3
    assert [m.runs_etcd for m in spec.members] == [True, True, True, False, False, False]
    ips = [member_ip(spec.private_subnet_cidrs[m.az_index], m) for m in spec.members]
    assert len(set(ips)) == 6 and ips[0] == "10.42.0.11"
    assert spec.service_name("primary") == "pg-orders-primary"


def test_pulumi_strings_and_json_objects_are_accepted():
    spec = spec_of({"replicas": "1", "storage": '{"kind": "ebs", "sizeGiB": "200", "iops": 6000}', "rpo": "1048576"})
    assert spec.replicas == 1 and spec.storage.size_gib == 200 and spec.storage.iops == 6000 and spec.rpo == 1048576
    assert not spec.synchronous


def test_component_args_use_snake_case_names_in_messages():
    spec = build_spec({"instance_type": "r7g.large", "storage": {"size_gib": 50}}, stack="s", region="us-east-1",
                      region_azs=AZS, style="args")
    assert spec.storage.size_gib == 50
    with pytest.raises(SpecError) as info:
        build_spec({"storage": {"size_gib": 0}}, stack="s", region="us-east-1", region_azs=AZS, style="args")
    assert "storage.size_gib = 0" in str(info.value)


def test_all_problems_are_reported_at_once():
    problems, text = problems_of({"arch": "sparc", "replicas": 9, "rto": "instant", "clusterName": "PG_Prod"})
    assert set(problems) == {"pgha:arch", "pgha:replicas", "pgha:rto", "pgha:clusterName"}
    assert "(4 problems)" in text
    assert "must be one of arm64, x86_64" in problems["pgha:arch"].allowed
    assert problems["pgha:replicas"].value == 9


@pytest.mark.parametrize("name", ["PG", "pg_prod", "1pg", "pg-", "a" * 25])
def test_cluster_name_follows_pigsty_rule(name):
    problems, _ = problems_of({"clusterName": name})
    assert "pgha:clusterName" in problems


def test_arch_and_instance_type_must_match():
    problems, _ = problems_of({"arch": "x86_64", "instanceType": "r7g.large"})
    assert "is arm64, but pgha:arch is x86_64" in problems["pgha:instanceType"].allowed


def test_unknown_instance_type_suggests_close_names():
    problems, _ = problems_of({"instanceType": "r7g.larg"})
    assert "closest: r7g.large" in problems["pgha:instanceType"].allowed


def test_metal_needs_nvme_and_rejects_ebs_settings():
    problems, _ = problems_of({"instanceType": "r7g.large", "storage": {"kind": "metal", "iops": 5000}})
    assert "no NVMe instance store" in problems["pgha:instanceType"].allowed
    assert "applies to ebs only" in problems["pgha:storage.iops"].allowed
    assert spec_of({"instanceType": "i4g.large", "storage": {"kind": "metal"}}).instance.nvme_count == 1


@pytest.mark.parametrize("storage, key, fragment", [
    ({"sizeGiB": 0}, "sizeGiB", "from 1 to 65536 GiB for gp3"),
    ({"sizeGiB": 70000}, "sizeGiB", "from 1 to 65536"),
    ({"iops": 2000}, "iops", "from 3000 to 80000 IOPS for gp3"),
    ({"iops": 90000, "sizeGiB": 1000}, "iops", "from 3000 to 80000"),
    ({"iops": 10000, "sizeGiB": 10}, "iops", "at most 500 IOPS per GiB: 5000 for 10 GiB"),
    ({"throughputMiBps": 100}, "throughputMiBps", "from 125 to 2000"),
    ({"throughputMiBps": 1000}, "throughputMiBps", "0.25 MiB/s per provisioned IOPS: 750"),
    ({"volumeType": "io2", "sizeGiB": 2}, "sizeGiB", "from 4 to 65536 GiB for io2"),
    ({"volumeType": "io2", "sizeGiB": 10, "iops": 20000}, "iops", "at most 1000 IOPS per GiB: 10000"),
    ({"volumeType": "io2", "iops": 300000}, "iops", "from 100 to 256000"),
    ({"volumeType": "io2", "throughputMiBps": 500}, "throughputMiBps", "applies to gp3 only"),
    ({"volumeType": "gp2"}, "volumeType", "must be one of gp3, io2"),
    ({"kind": "nfs"}, "kind", "must be one of ebs, metal"),
])
def test_ebs_limits(storage, key, fragment):
    problems, _ = problems_of({"storage": storage})
    assert fragment in problems[f"pgha:storage.{key}"].allowed


def test_ebs_values_within_limits_pass():
    s = spec_of({"storage": {"sizeGiB": 2000, "iops": 16000, "throughputMiBps": 1000}}).storage
    assert (s.size_gib, s.iops, s.throughput_mibps) == (2000, 16000, 1000)
    s = spec_of({"storage": {"volumeType": "io2", "sizeGiB": 500, "iops": 64000}}).storage
    assert (s.volume_type, s.iops, s.throughput_mibps) == ("io2", 64000, None)


def test_region_needs_three_azs_and_given_azs_must_be_in_it():
    problems, _ = problems_of({}, azs=["us-east-1a", "us-east-1b"])
    assert "must offer at least three availability zones" in problems["pgha:availabilityZones"].allowed
    problems, _ = problems_of({"availabilityZones": ["us-east-1a", "us-east-1a", "us-east-1b"]})
    assert "three distinct" in problems["pgha:availabilityZones"].allowed
    problems, _ = problems_of({"availabilityZones": ["us-east-1a", "us-east-1b", "eu-west-1a"]})
    assert "eu-west-1a not in region us-east-1" in problems["pgha:availabilityZones"].allowed


def test_replica_bounds_and_synchronous_needs_a_replica():
    for bad in (-1, 6, "two"):
        problems, _ = problems_of({"replicas": bad})
        assert "from 0 to 5" in problems["pgha:replicas"].allowed
    problems, _ = problems_of({"replicas": 0})
    assert "needs at least 1 replica" in problems["pgha:replicas"].allowed
    assert spec_of({"replicas": 0, "rpo": 1048576}).members[0].runs_etcd


@pytest.mark.parametrize("cidr, fragment", [
    ("0.0.0.0/0", "whole internet"), ("::/0", "whole internet"), ("10.0.0.300/8", "must be a CIDR"),
    ("office", "must be a CIDR"),
])
def test_cidrs_must_parse_and_never_be_open(cidr, fragment):
    problems, _ = problems_of({"network": {"allowedCidrs": ["10.1.0.0/16", cidr]}})
    assert fragment in problems["pgha:network.allowedCidrs"].allowed
    assert problems["pgha:network.allowedCidrs"].value == cidr
    problems, _ = problems_of({"network": {"monitoringCidrs": [cidr]}})
    assert "pgha:network.monitoringCidrs" in problems


def test_unknown_keys_are_errors_with_suggestions():
    problems, _ = problems_of({"replica": 3, "storage": {"sizeGB": 10}, "network": {"allowedCidr": []},
                               "backup": {"retention": 3}})
    assert "did you mean replicas?" in problems["pgha:replica"].allowed
    assert "did you mean sizeGiB?" in problems["pgha:storage.sizeGB"].allowed
    assert "did you mean allowedCidrs?" in problems["pgha:network.allowedCidr"].allowed
    assert "pgha:backup.retention" in problems


def test_existing_vpc_needs_one_subnet_per_az():
    problems, _ = problems_of({"network": {"vpcId": "vpc-0123456789abcdef0", "subnetIds": ["subnet-01234567"]}})
    assert "one private subnet per availability zone (3)" in problems["pgha:network.subnetIds"].allowed
    problems, _ = problems_of({"network": {"subnetIds": ["subnet-01234567"]}})
    assert "needs network.vpcId" in problems["pgha:network.subnetIds"].allowed


def test_parameters_owned_by_pgha_cannot_be_overridden():
    problems, _ = problems_of({"parameters": {"archive_command": "true", "Bad-Name": 1, "work_mem": "64MB"}})
    assert "archive and restore through pgBackRest" in problems["pgha:parameters.archive_command"].allowed
    assert "pgha:parameters.Bad-Name" in problems
    assert "pgha:parameters.work_mem" not in problems


def test_versions_profiles_and_backup_schedules():
    problems, _ = problems_of({"postgresVersion": 16, "profile": "web", "backup": {"fullSchedule": "daily",
                                                                                    "compression": "xz"}})
    # 16 would need PGDG: the node image is Debian 13's packages alone, and says so.
    assert problems["pgha:postgresVersion"].allowed.startswith("must be 17: the node image is Debian 13")
    assert problems_of({"postgresVersion": 18})[0]["pgha:postgresVersion"].value == 18
    assert "oltp, olap, crit, tiny" in problems["pgha:profile"].allowed
    assert "cron expression" in problems["pgha:backup.fullSchedule"].allowed
    assert "pgha:backup.compression" in problems


# AWS's per-AZ offerings for us-east-1 as moto ships them: r8g.large is offered in every AZ but
# us-east-1e (an old AZ that has no Graviton 4).
US_EAST_1_AZS = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1e", "us-east-1f"]


def offerings():
    from infra_mocks import moto_offerings

    return moto_offerings("us-east-1")


def test_a_type_missing_in_a_chosen_az_is_refused_naming_both():
    assert "r8g.large" not in offerings()["us-east-1e"]
    problems, text = problems_of({"instanceType": "r8g.large",
                                  "availabilityZones": ["us-east-1a", "us-east-1b", "us-east-1e"]},
                                 azs=US_EAST_1_AZS, offerings=offerings())
    assert "r8g.large is not offered in us-east-1e" in problems["pgha:availabilityZones"].allowed
    assert "offered in us-east-1a, us-east-1b, us-east-1c, us-east-1d, us-east-1f" in text


def test_default_azs_are_the_first_three_that_offer_the_type():
    offered = offerings()
    offered["us-east-1b"] = offered["us-east-1b"] - {"r8g.large"}
    spec = spec_of({"instanceType": "r8g.large"}, azs=US_EAST_1_AZS, offerings=offered)
    assert spec.availability_zones == ("us-east-1a", "us-east-1c", "us-east-1d")
    # Without offerings (pgha render offline) the region's first three, unchecked.
    assert spec_of({"instanceType": "r8g.large"}, azs=US_EAST_1_AZS).availability_zones == tuple(US_EAST_1_AZS[:3])


def test_a_type_offered_in_fewer_than_three_azs_is_refused():
    offered = {zone: types - {"r8g.large"} if zone != "us-east-1a" else types for zone, types in offerings().items()}
    problems, _ = problems_of({"instanceType": "r8g.large"}, azs=US_EAST_1_AZS, offerings=offered)
    assert problems["pgha:instanceType"].allowed == ("must be offered in three AZs of us-east-1; "
                                                     "it is offered in us-east-1a")
