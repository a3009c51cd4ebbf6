"""Every bad input of the security audit (shared/reviews/security-audit.md section 3), and more.

Each row is one bad input and the one line that must report it: the key, the value as given
and what is allowed. Stack-file rows go through ``pgha render --out DIR`` (exit status 2, DIR
never created); a subset also runs the Pulumi program under the mock runtime (no resource
registered); component-arg rows call build_spec; CLI rows check the message and status of the
command line; ``--to`` rows the one LSN/time parser restore and branches share.
"""

import json
import runpy
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from infra_mocks import REGION, REGION_AZS, run_program
from pgha.cli import main
from pgha.local.backups import BackupError, _lsn, check_target
from pgha.spec import SpecError, build_spec
from pgha.spec.validate import parse_lsn

ROOT = Path(__file__).resolve().parent.parent
AZS = list(REGION_AZS)
BRANCH = {"pgha:stackKind": "branch"}
BY_BUCKET = {"sourceBucket": "src-bucket", "sourceStanza": "pg-src"}
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:pg-src-cipher-AbCdEf"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


class Bad(NamedTuple):
    """A stack-file input (``config:`` of Pulumi.<stack>.yaml), the key and value the message names,
    and a fragment of what it says is allowed. ``problems``: how many the input has in all."""

    case: str
    config: dict[str, Any]
    key: str
    value: str
    allowed: str
    problems: int = 1
    stack: str = "bad"


def params(**given: Any) -> dict[str, Any]:
    return {"pgha:parameters": given}


NOT_INT = "must be an integer from 0 to 5"
NAME = "must be lowercase letters, digits and '-'"
LINE = "must be a single line without control characters"
CIDR_PRIVATE = "must lie inside a private range (10.0.0.0/8, 172.16.0.0/12"
CRON = "must be a cron expression of five fields"

STACK_FILE_CASES: list[Bad] = [
    # -- audit 1-15: replicas and clusterName
    Bad("1 replicas word", {"pgha:replicas": "two"}, "pgha:replicas", '"two"', NOT_INT),
    Bad("2 replicas 99", {"pgha:replicas": 99}, "pgha:replicas", "99", NOT_INT),
    Bad("3 replicas -1", {"pgha:replicas": -1}, "pgha:replicas", "-1", NOT_INT),
    Bad("4 replicas 2.5", {"pgha:replicas": 2.5}, "pgha:replicas", "2.5", NOT_INT),
    Bad("5 replicas true", {"pgha:replicas": True}, "pgha:replicas", "true", NOT_INT),
    Bad("6 replicas 2**80", {"pgha:replicas": 2 ** 80}, "pgha:replicas", str(2 ** 80), NOT_INT),
    Bad("7 replicas inf", {"pgha:replicas": float("inf")}, "pgha:replicas", "Infinity", NOT_INT),
    Bad("8 clusterName shell", {"pgha:clusterName": "pg-dev;rm -rf /"}, "pgha:clusterName", '"pg-dev;rm -rf /"', NAME),
    Bad("9 clusterName subshell", {"pgha:clusterName": "pg-$(id)"}, "pgha:clusterName", '"pg-$(id)"', NAME),
    Bad("10 clusterName newline", {"pgha:clusterName": "pg-dev\n"}, "pgha:clusterName", '"pg-dev\\n"', LINE),
    Bad("11 clusterName upper", {"pgha:clusterName": "PG-Dev"}, "pgha:clusterName", '"PG-Dev"', NAME),
    Bad("12 clusterName accent", {"pgha:clusterName": "pg-dév"}, "pgha:clusterName", '"pg-d\\u00e9v"', NAME),
    Bad("13 clusterName 25", {"pgha:clusterName": "pg-" + "a" * 22}, "pgha:clusterName", "pg-aaa",
        "must be 2 to 24 characters long"),
    Bad("14 clusterName jinja", {"pgha:clusterName": "pg-{{7*7}}"}, "pgha:clusterName", '"pg-{{7*7}}"', NAME),
    Bad("15 clusterName number", {"pgha:clusterName": 123}, "pgha:clusterName", "123", NAME),
    # -- audit 16-32: parameters
    Bad("16 value yaml", params(work_mem="4MB\nssl: 'off'"), "pgha:parameters.work_mem", '"4MB\\nssl', LINE),
    Bad("17 value conf", params(search_path="x'\nssl = off\n#"), "pgha:parameters.search_path", "ssl = off", LINE),
    Bad("18 name newline", params(**{"work_mem\n": "4MB"}), "pgha:parameters.work_mem\n", '"4MB"',
        "is not a PostgreSQL parameter name"),
    Bad("19 name yaml", params(**{"work_mem: 1\nssl": "on"}), "pgha:parameters.work_mem: 1\nssl", '"on"',
        "is not a PostgreSQL parameter name"),
    Bad("20 port", params(port=5433), "pgha:parameters.port", "5433", "is managed by pgha and Patroni"),
    Bad("21 password_encryption", params(password_encryption="md5"), "pgha:parameters.password_encryption", '"md5"',
        "must stay scram-sha-256"),
    Bad("22 ssl_min_protocol_version", params(ssl_min_protocol_version="TLSv1"),
        "pgha:parameters.ssl_min_protocol_version", '"TLSv1"', "TLSv1.2 at least"),
    Bad("23 log_line_prefix", params(log_line_prefix="%m "), "pgha:parameters.log_line_prefix", '"%m "',
        "is set by pgha"),
    Bad("24 ssl_passphrase_command", params(ssl_passphrase_command="/bin/sh -c id"),
        "pgha:parameters.ssl_passphrase_command", "/bin/sh -c id", "TLS is always on"),
    Bad("25 archive_library", params(archive_library="basic_archive"), "pgha:parameters.archive_library",
        '"basic_archive"', "belongs to pgBackRest's archiving"),
    Bad("27 list value", params(work_mem=["4MB"]), "pgha:parameters.work_mem", '["4MB"]',
        "must be a string, number or boolean"),
    Bad("28 name case", params(Work_Mem="4MB"), "pgha:parameters.Work_Mem", '"4MB"', "is not a PostgreSQL parameter name"),
    Bad("29 value 20 KB", params(application_name="x" * 20000), "pgha:parameters.application_name",
        "(20000 characters)", "must be at most 1024 characters"),
    Bad("30 unknown GUC", params(work_memory="4MB"), "pgha:parameters.work_memory", '"4MB"',
        "is not a parameter of PostgreSQL 17 (did you mean work_mem?)"),
    Bad("31 empty int", params(shared_buffers=""), "pgha:parameters.shared_buffers", '""',
        "must be an integer with an optional unit (B, kB, MB, GB, TB; bare numbers are in 8kB) from 16 to 1073741823"),
    Bad("32 parameters string", {"pgha:parameters": "work_mem=4MB"}, "pgha:parameters", '"work_mem=4MB"',
        "must be an object"),
    # -- audit 33-49: versions, arch, storage, CIDRs
    Bad("33 postgresVersion 14", {"pgha:postgresVersion": 14}, "pgha:postgresVersion", "14", "must be 17"),
    Bad("34 postgresVersion 17abc", {"pgha:postgresVersion": "17abc"}, "pgha:postgresVersion", '"17abc"',
        "must be an integer: one of 17"),
    Bad("35 arch aarch64", {"pgha:arch": "aarch64"}, "pgha:arch", '"aarch64"', "must be one of arm64, x86_64"),
    Bad("36 instanceType shell", {"pgha:instanceType": "t4g.medium;reboot"}, "pgha:instanceType",
        '"t4g.medium;reboot"', "must be an instance type in pgha's catalog"),
    Bad("37 instanceType arch", {"pgha:instanceType": "m7i.large"}, "pgha:instanceType", '"m7i.large"',
        "is x86_64, but pgha:arch is arm64"),
    Bad("38 sizeGiB 0", {"pgha:storage": {"sizeGiB": 0}}, "pgha:storage.sizeGiB", "0", "from 1 to 65536 GiB for gp3"),
    Bad("39 sizeGiB 1e20", {"pgha:storage": {"sizeGiB": 1e20}}, "pgha:storage.sizeGiB", "1e+20", "from 1 to 65536"),
    Bad("40 metal sizeGiB", {"pgha:storage": {"kind": "metal", "sizeGiB": 100}, "pgha:instanceType": "r8gd.large"},
        "pgha:storage.sizeGiB", "100", "applies to ebs only"),
    Bad("41 sizeGib typo", {"pgha:storage": {"sizeGib": 100}}, "pgha:storage.sizeGib", "100", "did you mean sizeGiB?"),
    Bad("42 storage string", {"pgha:storage": "big"}, "pgha:storage", '"big"', "must be an object"),
    Bad("43 allowedCidrs /0", {"pgha:network": {"allowedCidrs": ["0.0.0.0/0"]}}, "pgha:network.allowedCidrs",
        '"0.0.0.0/0"', "must not be open to the whole internet"),
    Bad("44 allowedCidrs halves", {"pgha:network": {"allowedCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}},
        "pgha:network.allowedCidrs", '"128.0.0.0/1"', "is broader than /8", problems=2),
    Bad("45 monitoringCidrs halves", {"pgha:network": {"monitoringCidrs": ["0.0.0.0/1", "128.0.0.0/1"]}},
        "pgha:network.monitoringCidrs", '"0.0.0.0/1"', "is broader than /8", problems=2),
    Bad("46 allowedCidrs ::/1", {"pgha:network": {"allowedCidrs": ["::/1"]}}, "pgha:network.allowedCidrs", '"::/1"',
        "is broader than /32"),
    Bad("47 CIDR /33", {"pgha:network": {"allowedCidrs": ["10.0.0.0/33"]}}, "pgha:network.allowedCidrs",
        '"10.0.0.0/33"', "must be a CIDR block"),
    Bad("48 CIDRs string", {"pgha:network": {"allowedCidrs": "10.0.0.0/8"}}, "pgha:network.allowedCidrs",
        '"10.0.0.0/8"', "must be a list of strings"),
    Bad("49 vpcCidr /8", {"pgha:network": {"vpcCidr": "10.0.0.0/8"}}, "pgha:network.vpcCidr", '"10.0.0.0/8"',
        "must be an IPv4 block from /16 to /22"),
    # -- audit 50-67: ids, network, backup, the rest
    Bad("50 vpcId newline", {"pgha:network": {"vpcId": "vpc-0123456789abcdef0\n", "subnetIds": []}},
        "pgha:network.vpcId", '"vpc-0123456789abcdef0\\n"', LINE),
    Bad("51 sg newline", {"pgha:network": {"allowedSecurityGroupIds": ["sg-0123456789abcdef0\n"]}},
        "pgha:network.allowedSecurityGroupIds", '"sg-0123456789abcdef0\\n"', LINE),
    Bad("52 natGateways none", {"pgha:network": {"natGateways": "none"}}, "pgha:network.natGateways", '"none"',
        "must be one of per-az, single"),
    Bad("53a vpcEndpoints yes", {"pgha:network": {"vpcEndpoints": "yes"}}, "pgha:network.vpcEndpoints", '"yes"',
        "must be one of create, existing, none"),
    Bad("53b vpcEndpoints existing, created VPC", {"pgha:network": {"vpcEndpoints": "existing"}},
        "pgha:network.vpcEndpoints", '"existing"', "existing needs network.vpcId"),
    Bad("53c packageMirrorCidrs no CIDR", {"pgha:network": {"packageMirrorCidrs": ["deb.debian.org"]}},
        "pgha:network.packageMirrorCidrs", '"deb.debian.org"', "must be a CIDR block such as 10.0.5.0/24"),
    Bad("53d packageMirrorCidrs without endpoints",
        {"pgha:network": {"vpcEndpoints": "none", "packageMirrorCidrs": ["10.0.5.0/24"]},
         "pgha:amiId": "ami-0123456789abcdef0"},
        "pgha:network.packageMirrorCidrs", '["10.0.5.0/24"]', "use create or existing to narrow it"),
    Bad("53e packageMirrorCidrs empty, official image", {"pgha:network": {"packageMirrorCidrs": []}},
        "pgha:network.packageMirrorCidrs", "[]", "needs amiId"),
    Bad("53 exposeDirectPorts yes", {"pgha:network": {"exposeDirectPorts": "yes"}}, "pgha:network.exposeDirectPorts",
        '"yes"', "must be true or false"),
    Bad("54 cron minute 61", {"pgha:backup": {"fullSchedule": "61 1 * * *"}}, "pgha:backup.fullSchedule",
        '"61 1 * * *"', "values must be from 0 to 59"),
    Bad("55 cron shell", {"pgha:backup": {"fullSchedule": "0 1 * * *;reboot"}}, "pgha:backup.fullSchedule",
        '"0 1 * * *;reboot"', CRON),
    Bad("56 cron newlines", {"pgha:backup": {"fullSchedule": "0\n1\n*\n*\n*"}}, "pgha:backup.fullSchedule",
        '"0\\n1\\n*\\n*\\n*"', LINE),
    Bad("57 retentionDays 0", {"pgha:backup": {"retentionDays": 0}}, "pgha:backup.retentionDays", "0",
        "from 1 to 3650 days"),
    Bad("58 compression xz", {"pgha:backup": {"compression": "xz"}}, "pgha:backup.compression", '"xz"',
        "must be one of lz4, zst, gz, bz2, none"),
    Bad("59 encryption yes", {"pgha:backup": {"encryption": "yes"}}, "pgha:backup.encryption", '"yes"',
        "must be true or false"),
    Bad("60 rto instant", {"pgha:rto": "instant"}, "pgha:rto", '"instant"', "must be one of"),
    Bad("61 rpo -5", {"pgha:rpo": -5}, "pgha:rpo", "-5", "must be an integer from 0 to 1073741824"),
    Bad("62 rpo 2**40", {"pgha:rpo": 2 ** 40}, "pgha:rpo", str(2 ** 40), "must be an integer from 0 to 1073741824"),
    Bad("63 poolMode case", {"pgha:poolMode": "Transaction"}, "pgha:poolMode", '"Transaction"',
        "must be one of transaction, session, statement"),
    Bad("64 stackKind global", {"pgha:stackKind": "global"}, "pgha:stackKind", '"global"',
        "must be one of regional, branch"),
    Bad("65 amiId short", {"pgha:amiId": "ami-123"}, "pgha:amiId", '"ami-123"', "must be an AMI id"),
    Bad("66 amiId newline", {"pgha:amiId": "ami-0123456789abcdef0\n"}, "pgha:amiId", '"ami-0123456789abcdef0\\n"', LINE),
    Bad("67 replica typo", {"pgha:replica": 2}, "pgha:replica", "2", "unknown key (did you mean replicas?)"),
    Bad("68 AZ duplicate", {"pgha:availabilityZones": ["us-east-1a", "us-east-1a", "us-east-1b"]},
        "pgha:availabilityZones", '["us-east-1a", "us-east-1a", "us-east-1b"]',
        "must be a list of three distinct availability zones"),
    Bad("69 AZ shell", {"pgha:availabilityZones": ["us-east-1a;id", "us-east-1b", "us-east-1c"]},
        "pgha:availabilityZones", '"us-east-1a;id"', "an availability zone is its region's name and a letter"),
    # -- audit 70-76: the provider's region, branches
    Bad("70 region shell", {"aws:region": "us-east-1;touch /tmp/x"}, "aws:region", '"us-east-1;touch /tmp/x"',
        "must be an AWS region name such as us-east-1"),
    Bad("71 region newline", {"aws:region": "us-east-1\nrepo1-cipher-type=none"}, "aws:region",
        '"us-east-1\\nrepo1-cipher-type=none"', "must be an AWS region name"),
    Bad("72 targetTime no zone", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetTime": "2025-01-31T12:00:00"}},
        "pgha:branch.targetTime", '"2025-01-31T12:00:00"', "an ISO-8601 time with a zone"),
    Bad("73 targetLsn hex", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetLsn": "0/XYZ"}}, "pgha:branch.targetLsn",
        '"0/XYZ"', "must be an LSN such as 0/3000060"),
    Bad("74 sourceStanza newline", {**BRANCH, "pgha:branch": {"sourceBucket": "src-bucket", "sourceStanza": "pg-src\n"}},
        "pgha:branch.sourceStanza", '"pg-src\\n"', LINE, problems=2),
    Bad("75 sourceBucket newline", {**BRANCH, "pgha:branch": {"sourceBucket": "src-bucket\n", "sourceStanza": "pg-src"}},
        "pgha:branch.sourceBucket", '"src-bucket\\n"', LINE, problems=2),
    Bad("76 branch on regional", {"pgha:branch": BY_BUCKET}, "pgha:branch", "src-bucket",
        "applies to stackKind branch only"),
    # -- audit D3, D9-D12
    Bad("D3 default name from stack", {}, "pgha:clusterName", "(not set)",
        "the default, 'pg-my_stack' from stack 'My_Stack', is not a valid cluster name", stack="My_Stack"),
    Bad("D9 subnetIds newline", {"pgha:network": {"vpcId": "vpc-0123456789abcdef0", "subnetIds": [
        "subnet-0123456789abcdef0\n", "subnet-0123456789abcdef1", "subnet-0123456789abcdef2"]}},
        "pgha:network.subnetIds", '"subnet-0123456789abcdef0\\n"', LINE, problems=2),
    Bad("D10 sourceStack newline", {**BRANCH, "pgha:branch": {"sourceStack": "org/pgha/prod\n"}},
        "pgha:branch.sourceStack", '"org/pgha/prod\\n"', LINE, problems=2),
    Bad("D11 cipher ARN newline", {**BRANCH, "pgha:branch": {**BY_BUCKET, "sourceCipherSecretArn": SECRET_ARN + "\n",
                                                            "sourceKeyArn": KEY_ARN}},
        "pgha:branch.sourceCipherSecretArn", "AbCdEf\\n", LINE),
    Bad("D12 targetLsn newline", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetLsn": "0/3000060\n"}},
        "pgha:branch.targetLsn", '"0/3000060\\n"', LINE),
    # -- new: CIDR policy
    Bad("public CIDR", {"pgha:network": {"allowedCidrs": ["203.0.113.0/24"]}}, "pgha:network.allowedCidrs",
        '"203.0.113.0/24"', CIDR_PRIVATE),
    Bad("public monitoring CIDR", {"pgha:network": {"monitoringCidrs": ["8.8.8.8/32"]}}, "pgha:network.monitoringCidrs",
        '"8.8.8.8/32"', "set pgha:network.cidrPolicy to public"),
    Bad("private /7", {"pgha:network": {"allowedCidrs": ["10.0.0.0/7"]}}, "pgha:network.allowedCidrs",
        '"10.0.0.0/7"', "is broader than /8"),
    Bad("ULA /7", {"pgha:network": {"allowedCidrs": ["fc00::/7"]}}, "pgha:network.allowedCidrs", '"fc00::/7"',
        "is broader than /8, the broadest private block"),
    Bad("public /7 even opted in", {"pgha:network": {"cidrPolicy": "public", "allowedCidrs": ["0.0.0.0/7"]}},
        "pgha:network.allowedCidrs", '"0.0.0.0/7"', "is broader than /8"),
    Bad("public IPv6 /16 opted in", {"pgha:network": {"cidrPolicy": "public", "allowedCidrs": ["2001::/16"]}},
        "pgha:network.allowedCidrs", '"2001::/16"', "is broader than /32"),
    Bad("cidrPolicy open", {"pgha:network": {"cidrPolicy": "open"}}, "pgha:network.cidrPolicy", '"open"',
        "must be one of private, public"),
    Bad("CIDR newline", {"pgha:network": {"allowedCidrs": ["10.0.0.0/8\n"]}}, "pgha:network.allowedCidrs",
        '"10.0.0.0/8\\n"', LINE),
    Bad("CGNAT too broad", {"pgha:network": {"monitoringCidrs": ["100.0.0.0/8"]}}, "pgha:network.monitoringCidrs",
        '"100.0.0.0/8"', CIDR_PRIVATE),
    # -- new: parameter types, ranges and refusals
    Bad("bool word", params(log_checkpoints="maybe"), "pgha:parameters.log_checkpoints", '"maybe"',
        "must be a boolean: true or false"),
    Bad("bool number", params(log_checkpoints=2), "pgha:parameters.log_checkpoints", "2", "must be a boolean"),
    Bad("enum value", params(huge_pages="sometimes"), "pgha:parameters.huge_pages", '"sometimes"',
        "must be one of off, on, try"),
    Bad("enum number", params(wal_compression=5), "pgha:parameters.wal_compression", "5", "must be one of"),
    Bad("int below min", params(max_connections=0), "pgha:parameters.max_connections", "0", "from 1 to 262143"),
    Bad("int fraction", params(max_connections=2.5), "pgha:parameters.max_connections", "2.5",
        "must be an integer from 1 to 262143"),
    Bad("int fraction text", params(max_connections="2.5"), "pgha:parameters.max_connections", '"2.5"',
        "must be an integer"),
    Bad("int bool", params(max_connections=True), "pgha:parameters.max_connections", "true", "must be an integer"),
    Bad("unknown unit", params(work_mem="64XB"), "pgha:parameters.work_mem", '"64XB"',
        "must be an integer with an optional unit (B, kB, MB, GB, TB; bare numbers are in kB)"),
    Bad("time unit on memory", params(work_mem="10s"), "pgha:parameters.work_mem", '"10s"', "B, kB, MB, GB, TB"),
    Bad("memory unit on time", params(statement_timeout="10MB"), "pgha:parameters.statement_timeout", '"10MB"',
        "us, ms, s, min, h, d"),
    Bad("unit case", params(work_mem="64mb"), "pgha:parameters.work_mem", '"64mb"', "must be an integer"),
    Bad("unit word", params(statement_timeout="1 hour"), "pgha:parameters.statement_timeout", '"1 hour"',
        "must be an integer with an optional unit"),
    Bad("over max", params(shared_buffers="100TB"), "pgha:parameters.shared_buffers", '"100TB"',
        "from 16 to 1073741823 8kB"),
    Bad("hex int", params(max_connections="0x10"), "pgha:parameters.max_connections", '"0x10"', "must be an integer"),
    Bad("padded int", params(max_connections=" 100"), "pgha:parameters.max_connections", '" 100"',
        "must be an integer"),
    Bad("NaN", params(random_page_cost="NaN"), "pgha:parameters.random_page_cost", '"NaN"', "must be a number"),
    Bad("real word", params(random_page_cost="fast"), "pgha:parameters.random_page_cost", '"fast"', "must be a number"),
    Bad("real negative", params(random_page_cost=-1), "pgha:parameters.random_page_cost", "-1", "from 0 to"),
    Bad("internal", params(block_size=16384), "pgha:parameters.block_size", "16384", "is read-only"),
    Bad("restore_command", params(restore_command="cp /x %p"), "pgha:parameters.restore_command", '"cp /x %p"',
        "runs a shell command as the postgres user"),
    Bad("archive_cleanup_command", params(archive_cleanup_command="rm -rf /"),
        "pgha:parameters.archive_cleanup_command", '"rm -rf /"', "runs a shell command"),
    Bad("archive_timeout", params(archive_timeout="5min"), "pgha:parameters.archive_timeout", '"5min"',
        "is managed by pgha and Patroni"),
    Bad("archive_mode", params(archive_mode="off"), "pgha:parameters.archive_mode", '"off"', "is managed by pgha"),
    Bad("shared_preload_libraries", params(shared_preload_libraries="auto_explain"),
        "pgha:parameters.shared_preload_libraries", '"auto_explain"', "it preloads pg_stat_statements"),
    Bad("fsync", params(fsync="off"), "pgha:parameters.fsync", '"off"', "must stay on"),
    Bad("full_page_writes", params(full_page_writes=False), "pgha:parameters.full_page_writes", "false", "must stay on"),
    Bad("zero_damaged_pages", params(zero_damaged_pages="on"), "pgha:parameters.zero_damaged_pages", '"on"',
        "destroys data silently"),
    Bad("ssl off", params(ssl="off"), "pgha:parameters.ssl", '"off"', "TLS is always on"),
    Bad("ssl_ciphers", params(ssl_ciphers="NULL"), "pgha:parameters.ssl_ciphers", '"NULL"', "cannot be weakened"),
    Bad("listen_addresses", params(listen_addresses="*"), "pgha:parameters.listen_addresses", '"*"',
        "is managed by pgha"),
    Bad("logging_collector", params(logging_collector="off"), "pgha:parameters.logging_collector", '"off"',
        "is managed by pgha"),
    Bad("recovery_target_time", params(recovery_target_time="2025-01-01"), "pgha:parameters.recovery_target_time",
        '"2025-01-01"', "is managed by pgha"),
    Bad("unknown extension", params(**{"foo.bar": "1"}), "pgha:parameters.foo.bar", '"1"',
        "is not a parameter of PostgreSQL 17"),
    Bad("extension typo", params(**{"pg_stat_statements.maxx": 100}), "pgha:parameters.pg_stat_statements.maxx", "100",
        "did you mean pg_stat_statements.max?"),
    Bad("extension range", params(**{"pg_stat_statements.max": 10}), "pgha:parameters.pg_stat_statements.max", "10",
        "from 100 to"),
    Bad("value tab", params(application_name="a\tb"), "pgha:parameters.application_name", '"a\\tb"', LINE),
    Bad("value NUL", params(application_name="a\x00b"), "pgha:parameters.application_name", '"a\\u0000b"', LINE),
    Bad("value line separator", params(application_name="a\u2028b"), "pgha:parameters.application_name",
        '"a\\u2028b"', LINE),
    Bad("value object", params(work_mem={"a": 1}), "pgha:parameters.work_mem", '{"a": 1}',
        "must be a string, number or boolean"),
    # -- new: other single-line strings, schedules, keys
    Bad("clusterName trailing space", {"pgha:clusterName": "pg-dev "}, "pgha:clusterName", '"pg-dev "', NAME),
    Bad("clusterName ends with -", {"pgha:clusterName": "pg-"}, "pgha:clusterName", '"pg-"', NAME),
    Bad("cron trailing newline", {"pgha:backup": {"diffSchedule": "0 1 * * *\n"}}, "pgha:backup.diffSchedule",
        '"0 1 * * *\\n"', LINE),
    Bad("cron double space", {"pgha:backup": {"incrSchedule": "0  1 * * *"}}, "pgha:backup.incrSchedule",
        '"0  1 * * *"', CRON),
    Bad("cron tab", {"pgha:backup": {"fullSchedule": "0\t1 * * *"}}, "pgha:backup.fullSchedule", '"0\\t1 * * *"', LINE),
    Bad("cron step 0", {"pgha:backup": {"diffSchedule": "*/0 * * * *"}}, "pgha:backup.diffSchedule", '"*/0 * * * *"',
        "the step must be at least 1"),
    Bad("cron unicode digit", {"pgha:backup": {"fullSchedule": "\u0661 1 * * *"}}, "pgha:backup.fullSchedule",
        '"\\u0661 1 * * *"', CRON),
    Bad("targetTime newline", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetTime": "latest\n"}},
        "pgha:branch.targetTime", '"latest\\n"', LINE),
    Bad("sourceKeyArn newline", {**BRANCH, "pgha:branch": {**BY_BUCKET, "sourceCipherSecretArn": SECRET_ARN,
                                                          "sourceKeyArn": KEY_ARN + "\n"}},
        "pgha:branch.sourceKeyArn", "ab\\n", LINE),
    Bad("region upper", {"aws:region": "US-EAST-1"}, "aws:region", '"US-EAST-1"', "must be an AWS region name"),
    Bad("region number", {"aws:region": 1}, "aws:region", '"1"', "must be an AWS region name"),
    Bad("region trailing newline", {"aws:region": "us-east-1\n"}, "aws:region", '"us-east-1\\n"', "one line"),
    Bad("AZs string", {"pgha:availabilityZones": "us-east-1a"}, "pgha:availabilityZones", '"us-east-1a"',
        "must be a list of three distinct availability zones"),
    Bad("AZ newline", {"pgha:availabilityZones": ["us-east-1a\n", "us-east-1b", "us-east-1c"]},
        "pgha:availabilityZones", "us-east-1a\\n", "an availability zone is its region's name and a letter"),
    Bad("network string", {"pgha:network": "default"}, "pgha:network", '"default"', "must be an object"),
    Bad("backup string", {"pgha:backup": "nightly"}, "pgha:backup", '"nightly"', "must be an object"),
    Bad("unknown top key", {"pgha:colour": "blue"}, "pgha:colour", '"blue"', "unknown key"),
    Bad("volumeType gp2", {"pgha:storage": {"volumeType": "gp2"}}, "pgha:storage.volumeType", '"gp2"',
        "must be one of gp3, io2"),
    Bad("gp3 iops", {"pgha:storage": {"iops": 100000}}, "pgha:storage.iops", "100000",
        "from 3000 to 80000 IOPS for gp3"),
    Bad("rpo word", {"pgha:rpo": "zero"}, "pgha:rpo", '"zero"', "must be an integer from 0 to 1073741824"),
    Bad("profile fast", {"pgha:profile": "fast"}, "pgha:profile", '"fast"', "must be one of"),
    Bad("branch without source", {**BRANCH}, "pgha:branch", "(not set)", "a branch needs {sourceStack}"),
    Bad("branch time and LSN", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetTime": "latest", "targetLsn": "0/1"}},
        "pgha:branch.targetLsn", '"0/1"', "give targetTime or targetLsn, not both"),
    Bad("branch stack and bucket", {**BRANCH, "pgha:branch": {**BY_BUCKET, "sourceStack": "prod"}},
        "pgha:branch.sourceBucket", '"src-bucket"', "give either sourceStack or sourceBucket, not both"),
    Bad("branch own stanza", {**BRANCH, "pgha:clusterName": "pg-src", "pgha:branch": BY_BUCKET}, "pgha:clusterName",
        '"pg-src"', "a branch needs a cluster name of its own"),
    Bad("cipher without key", {**BRANCH, "pgha:branch": {**BY_BUCKET, "sourceCipherSecretArn": SECRET_ARN}},
        "pgha:branch.sourceKeyArn", "(not set)", "needs the source's KMS key ARN"),
    Bad("targetLsn too long", {**BRANCH, "pgha:branch": {**BY_BUCKET, "targetLsn": "123456789/0"}},
        "pgha:branch.targetLsn", '"123456789/0"', "must be an LSN"),
    # -- pgha:kubernetes (issue 13)
    Bad("kubernetes unknown key", {"pgha:kubernetes": {"namespace": "apps", "namespaces": "x"}},
        "pgha:kubernetes.namespaces", '"x"', "unknown key (did you mean namespace?)"),
    Bad("kubernetes namespace upper", {"pgha:kubernetes": {"namespace": "Apps"}}, "pgha:kubernetes.namespace",
        '"Apps"', "must be a Kubernetes namespace: a DNS-1123 label"),
    Bad("kubernetes namespace newline", {"pgha:kubernetes": {"namespace": "apps\n"}}, "pgha:kubernetes.namespace",
        '"apps\\n"', LINE),
    Bad("kubernetes without namespace", {"pgha:kubernetes": {"release": "monitoring"}}, "pgha:kubernetes.namespace",
        "(not set)", "is required with pgha:kubernetes"),
    Bad("kubernetes not an object", {"pgha:kubernetes": "apps"}, "pgha:kubernetes", '"apps"', "must be an object"),
    # -- pgha:logs (issue 13): CloudWatch Logs takes only its own retention periods
    Bad("logs retention 8", {"pgha:logs": {"retentionDays": 8}}, "pgha:logs.retentionDays", "8",
        "must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, "
        "2922, 3288, 3653: the retention periods CloudWatch Logs allows"),
    Bad("logs retention 0", {"pgha:logs": {"retentionDays": 0}}, "pgha:logs.retentionDays", "0",
        "the retention periods CloudWatch Logs allows"),
    Bad("logs retention word", {"pgha:logs": {"retentionDays": "week"}}, "pgha:logs.retentionDays", '"week"',
        "must be an integer: one of 1, 3, 5, 7"),
    Bad("logs unknown key", {"pgha:logs": {"retention": 7}}, "pgha:logs.retention", "7",
        "unknown key (did you mean retentionDays?)"),
    Bad("logs not an object", {"pgha:logs": "7"}, "pgha:logs", '"7"', "must be an object"),
]


def write_stack(project: Path, config: dict[str, Any], stack: str = "bad") -> None:
    shutil.copy(ROOT / "Pulumi.yaml", project / "Pulumi.yaml")
    (project / f"Pulumi.{stack}.yaml").write_text(yaml.safe_dump({"config": {"aws:region": REGION, **config}}))


def render(project: Path, stack: str, *extra: str) -> int:
    return main(["--project-dir", str(project), "--stack", stack, "render", "--out", str(project / "out"), *extra])


def problem_line(err: str, key: str, value: str) -> str:
    """The one line of ``err`` reporting ``key`` with ``value`` (a key with a newline is quoted)."""
    shown = json.dumps(key) if "\n" in key else key
    lines = [line for line in err.splitlines() if line.startswith(f"  - {shown} = ") and value in line]
    assert len(lines) == 1, err
    return lines[0]


def test_the_table_is_large_and_distinct() -> None:
    inputs = [json.dumps([c.config, c.stack], sort_keys=True) for c in STACK_FILE_CASES]
    assert len(set(inputs)) == len(inputs)
    assert len({c.case for c in STACK_FILE_CASES}) == len(STACK_FILE_CASES)
    assert len(STACK_FILE_CASES) + len(ARGS_CASES) + len(CLI_CASES) + len(TARGETS) >= 150


@pytest.mark.parametrize("bad", STACK_FILE_CASES, ids=[c.case for c in STACK_FILE_CASES])
def test_bad_stack_file_input_is_one_clear_problem_and_writes_nothing(bad: Bad, tmp_path: Path, capsys) -> None:
    write_stack(tmp_path, bad.config, bad.stack)
    assert render(tmp_path, bad.stack) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    noun = "problem" if bad.problems == 1 else "problems"
    assert f"invalid pgha configuration ({bad.problems} {noun})" in captured.err
    line = problem_line(captured.err, bad.key, bad.value)
    assert bad.allowed in line, line
    assert not (tmp_path / "out").exists()


# The Pulumi program under the mock runtime: a representative subset declares nothing at all.
DECLARE_NOTHING = ["10 clusterName newline", "16 value yaml", "21 password_encryption", "29 value 20 KB",
                   "30 unknown GUC", "44 allowedCidrs halves", "46 allowedCidrs ::/1", "51 sg newline",
                   "56 cron newlines", "70 region shell", "71 region newline", "74 sourceStanza newline",
                   "D3 default name from stack", "public CIDR", "int below min"]


@pytest.mark.parametrize("case", DECLARE_NOTHING)
def test_bad_config_declares_no_resource(case: str) -> None:
    bad = next(c for c in STACK_FILE_CASES if c.case == case)
    config = {k: (json.dumps(v) if isinstance(v, (dict, list)) else str(v).lower() if isinstance(v, bool) else str(v))
              for k, v in {"aws:region": REGION, **bad.config}.items()}
    with pytest.raises(SpecError) as caught:
        run_program(lambda: runpy.run_path(str(ROOT / "__main__.py"), run_name="__main__"), config=config,
                    stack=bad.stack, region=None)
    assert caught.value.pgha_run.resources == []  # type: ignore[attr-defined]
    line = problem_line(str(caught.value), bad.key, bad.value)
    assert bad.allowed in line, line


# Component args (snake_case, Python values), as a program passing PostgresClusterArgs does.
ARGS_CASES: list[tuple[str, Any, str, str]] = [
    ("D4 parameter name not a string", {"parameters": {1: "x"}}, 'parameters.1 = "x"', "is not a PostgreSQL parameter"),
    ("D5 args a list", ["replicas", 2], 'args = ["replicas", 2]', "must be an object"),
    ("args a string", "replicas=2", 'args = "replicas=2"', "must be an object"),
    ("unknown arg not a string", {3: "x"}, '3 = "x"', "unknown key"),
    ("args parameters list", {"parameters": ["work_mem"]}, 'parameters = ["work_mem"]', "must be an object"),
    ("args cidr policy", {"network": {"cidr_policy": "any"}}, 'network.cidr_policy = "any"', "one of private, public"),
    ("args cidr public", {"network": {"allowed_cidrs": ["1.1.1.0/24"]}}, 'network.allowed_cidrs = "1.1.1.0/24"',
     "network.cidrPolicy"),
    ("D6 storage bad JSON", {"storage": "{bad json"}, 'storage = "{bad json"', "must be an object"),
    ("nested key not a string", {"storage": {7: "x"}}, 'storage.7 = "x"', "unknown key"),
    ("args bool parameter", {"parameters": {"jit": "perhaps"}}, 'parameters.jit = "perhaps"', "must be a boolean"),
    ("args logs retention", {"logs": {"retention_days": 10}}, "logs.retention_days = 10",
     "the retention periods CloudWatch Logs allows"),
]


@pytest.mark.parametrize(("case", "args", "shown", "allowed"), ARGS_CASES, ids=[c[0] for c in ARGS_CASES])
def test_bad_component_args_are_refused_clearly(case: str, args: Any, shown: str, allowed: str) -> None:
    with pytest.raises(SpecError) as caught:
        build_spec(args, stack="dev", region=REGION, region_azs=AZS, style="args")
    (problem,) = caught.value.problems
    assert str(problem).startswith(shown) and allowed in str(problem), str(problem)


def test_region_from_the_provider_is_validated_for_component_args() -> None:
    with pytest.raises(SpecError) as caught:
        build_spec({}, stack="dev", region="us-east-1;touch /tmp/pwn", region_azs=AZS, style="args")
    assert str(caught.value.problems[0]).startswith('aws:region = "us-east-1;touch /tmp/pwn": must be an AWS region')


# The command line: each a user error, one message, exit status 2, nothing written.
# (case, the stack file's text or None for a good one, flags before render, render's flags, message)
CLI_CASES: list[tuple[str, Any, list[str], list[str], str]] = [
    ("77 malformed YAML", "config: [\n", [], [], "is not valid YAML"),
    ("78 config not a map", "config: hello\n", [], [], "config: must be a map of keys"),
    ("79 top-level list", "- a\n- b\n", [], [], "must be a map of keys (config:, ...); it is a list"),
    ("top-level string", "hello\n", [], [], "it is a str"),
    ("not UTF-8", b"config:\n  pgha:replicas: \xff\n", [], [], "cannot read stack file"),
    ("C3 missing stack", None, ["--stack", "nosuch"], [], "no stack file"),
    ("C4 stack is a path", None, ["--stack", "../../etc/passwd"], [], "a stack name is letters, digits"),
    ("stack with space", None, ["--stack", "my stack"], [], "a stack name is letters, digits"),
    ("C5 no project dir", None, ["--project-dir", "/nonexistent"], [], "--project-dir /nonexistent: no such directory"),
    ("C8 bucket newline", None, [], ["--bucket", "b\nrepo1-cipher-type=none"],
     "--bucket 'b\\nrepo1-cipher-type=none': must be an S3 bucket name"),
    ("bucket upper", None, [], ["--bucket", "My-Bucket"], "must be an S3 bucket name"),
    ("secret id shell", None, [], ["--secret-id", 'x"; touch /tmp/x; "'], "must be a Secrets Manager secret ARN"),
]


@pytest.mark.parametrize(("case", "stack_text", "flags", "render_flags", "message"), CLI_CASES,
                         ids=[c[0] for c in CLI_CASES])
def test_cli_user_errors_are_one_message_and_status_2(case: str, stack_text: Any, flags: list[str],
                                                      render_flags: list[str], message: str, tmp_path: Path,
                                                      capsys) -> None:
    write_stack(tmp_path, {}, "ok")
    if stack_text is not None:
        data = stack_text if isinstance(stack_text, bytes) else stack_text.encode()
        (tmp_path / "Pulumi.ok.yaml").write_bytes(data)
    argv = ["--project-dir", str(tmp_path), "--stack", "ok", *flags, "render", "--out", str(tmp_path / "out"),
            *render_flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [[], ["render", "--bogus"]], ids=["C1 no subcommand", "C2 unknown flag"])
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2 and "usage: pgha" in capsys.readouterr().err


def test_out_that_is_a_file_or_unwritable_is_one_message(tmp_path: Path, capsys) -> None:
    write_stack(tmp_path, {}, "ok")
    (tmp_path / "afile").write_text("x")
    assert main(["--project-dir", str(tmp_path), "--stack", "ok", "render", "--out", str(tmp_path / "afile")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err
    assert main(["--project-dir", str(tmp_path), "--stack", "ok", "render", "--out", "/proc/pgha-x"]) == 2
    err = capsys.readouterr().err
    assert "/proc/pgha-x" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "afile").read_text() == "x"


# restore --to and branch create --to: one strict parser of LSNs (shared with branch.targetLsn).
TARGETS = ["yesterday", "2025-01-31T12:00:00", "2025-13-01T00:00:00Z", "2025-01-31T12:00:00+25:00", "0/XYZ",
           "latest; rm -rf /", "", "0/3000060\n", "-1/0", "0x10/0", "1_0/0", "FFFFFFFFFFFF/0", " 0/1", "0/1 ",
           "LATEST", "latest\n", "0/", "/0", "0//1", "\u0661/0", "2025-01-31T12:00:00Z\n"]


@pytest.mark.parametrize("target", TARGETS)
def test_bad_restore_targets_are_refused(target: str) -> None:
    with pytest.raises(BackupError, match="give latest, an ISO-8601 time with a zone"):
        check_target(target)
    assert parse_lsn(target) is None


@pytest.mark.parametrize("command", [["restore"], ["branch", "create", "b1", "--from", "pg-ok"]])
def test_bad_to_exits_2_before_any_cluster_is_touched(command: list[str], tmp_path: Path, capsys) -> None:
    write_stack(tmp_path, {}, "ok")
    # --root points nowhere usable: validation must stop before the cluster is looked at.
    argv = ["--project-dir", str(tmp_path), "--stack", "ok", *command, "--to=-1/0", "--root", str(tmp_path / "no-root")]
    assert main(argv) == 2
    assert "--to '-1/0': give latest" in capsys.readouterr().err
    assert not (tmp_path / "no-root").exists()


@pytest.mark.parametrize("name", ["pg-x;rm -rf /", "b1\n", "B1", "b1-", "b" * 25, "../b1"])
@pytest.mark.parametrize("action", ["create", "promote", "delete"])
def test_bad_branch_names_exit_2_before_any_cluster_is_touched(name: str, action: str, tmp_path: Path,
                                                               capsys) -> None:
    write_stack(tmp_path, {}, "ok")
    argv = ["--project-dir", str(tmp_path), "--stack", "ok", "branch", action, name, "--root", str(tmp_path / "no-root")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"branch name {name!r}: lowercase letters" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no-root").exists()


def test_good_lsns_and_times_still_pass() -> None:
    assert parse_lsn("0/3000060") == 0x3000060 and _lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn("FFFFFFFF/FFFFFFFF") == (1 << 64) - 1
    for target in ("latest", "0/3000060", "2025-01-31T12:00:00Z", "2025-01-31T12:00:00+02:00"):
        assert check_target(target) == target


# What stays accepted: escaped or harmless (audit SAFE), or deliberately allowed.
ACCEPTED: list[tuple[str, dict[str, Any], Any]] = [
    ("26 jinja in a value", {"parameters": {"application_name": "{{ 7*7 }}{% raw %}"}},
     lambda s: s.parameters["application_name"] == "{{ 7*7 }}{% raw %}"),
    ("public client range, opted in", {"network": {"cidrPolicy": "public", "allowedCidrs": ["203.0.113.0/24"]}},
     lambda s: s.network.allowed_cidrs == ("203.0.113.0/24",)),
    ("private ranges", {"network": {"allowedCidrs": ["10.0.0.0/8", "172.16.0.0/12", "100.64.0.0/10", "fd00::/8"]}},
     lambda s: len(s.network.allowed_cidrs) == 4),
    ("typed parameters", {"parameters": {"work_mem": "64MB", "jit": False, "huge_pages": "on", "random_page_cost": 1.5,
                                         "statement_timeout": "30s", "shared_buffers": "1.5GB",
                                         "log_min_duration_statement": 250, "vacuum_cost_delay": "2ms",
                                         "pg_stat_statements.max": 10000, "auto_explain.log_min_duration": "1s",
                                         "session_preload_libraries": "auto_explain", "DateStyle".lower(): "ISO, MDY",
                                         "search_path": '"$user", public', "wal_compression": True,
                                         "max_connections": "200", "effective_io_concurrency": 300}},
     lambda s: s.parameters["jit"] is False and len(s.parameters) == 16),
    ("logs kept 7 days by default", {}, lambda s: s.logs.retention_days == 7),
    ("logs kept a year", {"logs": {"retentionDays": "365"}}, lambda s: s.logs.retention_days == 365),
    ("-1 where the range allows it", {"parameters": {"log_min_duration_statement": -1, "temp_file_limit": "-1"}},
     lambda s: s.parameters["temp_file_limit"] == "-1"),
]


@pytest.mark.parametrize(("case", "values", "check"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_harmless_and_deliberate_inputs_stay_accepted(case: str, values: dict[str, Any], check: Any) -> None:
    assert check(build_spec(values, stack="dev", region=REGION, region_azs=AZS))


def test_everything_patroni_yml_sets_itself_is_refused() -> None:
    """No silent duplicate key: each parameter the template writes after the user's is refused."""
    import re

    template = (ROOT / "config-templates" / "patroni.yml.j2").read_text()
    block = template.split("{% for key, value in local_parameters | dictsort %}", 1)[1].split("  pg_hba:", 1)[0]
    fixed = re.findall(r"^    ([a-z_]+):", block, flags=re.M)
    assert {"ssl", "archive_command", "log_line_prefix", "archive_timeout", "logging_collector"} <= set(fixed)
    for name in fixed:
        with pytest.raises(SpecError) as caught:
            build_spec({"parameters": {name: "x"}}, stack="dev", region=REGION, region_azs=AZS)
        assert "pgha" in caught.value.problems[0].allowed, name


def test_user_data_over_the_limit_is_a_validation_problem(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys) -> None:
    """The budget is checked inside build_spec, on the real boot files at their longest; today's
    user-data is about a third of EC2's limit, so the limit is lowered to see the check fire."""
    from pgha.render import userdata

    spec = build_spec({}, stack="dev", region=REGION, region_azs=AZS)
    assert userdata.user_data_problems(spec) == []
    monkeypatch.setattr(userdata, "EC2_USER_DATA_LIMIT", 4096)
    with pytest.raises(SpecError) as caught:
        build_spec({}, stack="dev", region=REGION, region_azs=AZS)
    assert len(caught.value.problems) == 3  # each member's
    line = str(caught.value.problems[0])
    assert line.startswith('pgha:clusterName = "pg-dev": user-data of pg-dev-1 would be ') and "over EC2's 4096" in line
    write_stack(tmp_path, {}, "ok")
    assert render(tmp_path, "ok") == 2
    assert "user-data of pg-ok-1" in capsys.readouterr().err and not (tmp_path / "out").exists()
