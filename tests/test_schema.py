"""spec.schema is the one list of stack config keys: Pulumi.yaml and the component's Args agree with it.

The checkers return every disagreement (key, type, default) as a line; each is also run on a
deliberately drifted copy, so a silent checker cannot pass.
"""

import ast
import copy
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

import pytest
import yaml

from infra_mocks import REGION, REGION_AZS
from pgha.infra import cluster as component
from pgha.spec import SpecError, build_spec, schema
from pgha.spec.schema import Field, Group

ROOT = Path(__file__).resolve().parent.parent
PULUMI_TYPES = {str: "string", int: "integer", bool: "boolean", list: "array"}
ARG_TYPES: dict[Any, Any] = {str: str, int: int, bool: bool, list: Sequence[str], dict: Mapping[str, Any]}


def pulumi_config_drift(declared: Mapping[str, Any]) -> list[str]:
    """How Pulumi.yaml's ``config:`` block disagrees with the schema."""
    drift = [f"{key}: declared in Pulumi.yaml, not in the schema" for key in declared if key not in schema.TOP.keys]
    for f in schema.TOP.fields:
        decl = declared.get(f.key)
        if decl is None:
            drift.append(f"{f.key}: in the schema, not declared in Pulumi.yaml")
            continue
        # A key whose default depends on the stack kind is declared unset and untyped (see Field).
        by_kind = f.branch_default is not None
        want_type = None if by_kind else PULUMI_TYPES.get(f.type)
        if decl.get("type") != want_type:
            drift.append(f"{f.key}: type {decl.get('type')!r}, schema says {want_type!r}")
        if f.type is list and decl.get("items") != {"type": "string"}:
            drift.append(f"{f.key}: items {decl.get('items')!r}, schema says a list of strings")
        want = f.unset if f.default is None or by_kind else f.default
        if "default" not in decl or decl["default"] != want or type(decl["default"]) is not type(want):
            drift.append(f"{f.key}: default {decl.get('default')!r}, schema says {want!r}")
        if not decl.get("description"):
            drift.append(f"{f.key}: no description")
    return drift


def field_docs(source: str) -> dict[str, dict[str, str]]:
    """class name -> field -> the docstring under it (TypedDict field docs exist in the source only)."""
    out: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            docs = out.setdefault(node.name, {})
            for stmt, after in zip(node.body, node.body[1:]):
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)):
                    docs[stmt.target.id] = " ".join(str(after.value.value).split())
    return out


def args_drift(group: Group, classes: Mapping[str, type], docs: Mapping[str, Mapping[str, str]]) -> list[str]:
    """How a TypedDict (and the ones of its groups) disagrees with the schema group."""
    cls = classes[group.args_class]
    hints = typing.get_type_hints(cls)
    where = group.args_class
    drift = [f"{where}.{arg}: not in the schema" for arg in hints if arg not in group.keys.values()]
    for f in group.fields:
        if f.arg not in hints:
            drift.append(f"{where}.{f.arg}: in the schema ({f.key}), missing")
            continue
        want = classes.get(f.group.args_class) if f.group else ARG_TYPES[f.type]
        if hints[f.arg] != want:
            drift.append(f"{where}.{f.arg}: type {hints[f.arg]!r}, schema says {want!r}")
        doc = docs.get(where, {}).get(f.arg, "")
        if f"(default {f.default_text})" not in doc:
            drift.append(f"{where}.{f.arg}: docstring {doc!r} lacks '(default {f.default_text})'")
        for choice in f.choices:
            if isinstance(choice, str) and f"``{choice}``" not in doc:
                drift.append(f"{where}.{f.arg}: docstring does not name the choice ``{choice}``")
        if f.group is not None:
            drift += args_drift(f.group, classes, docs)
    return drift


def component_classes() -> dict[str, type]:
    return {name: obj for name, obj in vars(component).items() if isinstance(obj, type)}


def component_docs() -> dict[str, dict[str, str]]:
    return field_docs(Path(component.__file__).read_text())


def test_pulumi_yaml_agrees_with_the_schema() -> None:
    declared = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"]
    assert pulumi_config_drift(declared) == []


def test_pulumi_yaml_is_the_generated_block() -> None:
    import importlib.util

    loader = importlib.util.spec_from_file_location("pulumi_config", ROOT / "scripts" / "pulumi_config.py")
    assert loader is not None and loader.loader is not None
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    text = (ROOT / "Pulumi.yaml").read_text()
    assert module.rendered(text) == text, "run venv/bin/python scripts/pulumi_config.py"


def test_component_args_agree_with_the_schema() -> None:
    assert args_drift(schema.TOP, component_classes(), component_docs()) == []


def test_drifted_pulumi_yaml_is_caught() -> None:
    declared = copy.deepcopy(yaml.safe_load((ROOT / "Pulumi.yaml").read_text())["config"])
    del declared["branch"]
    # The declaration before the fix: a typed default that Pulumi applies to branch stacks too.
    declared["replicas"] = {"type": "integer", "default": 2, "description": "Replicas besides the primary."}
    declared["arch"]["type"] = "integer"
    declared["clusterName"]["default"] = None
    declared["colour"] = {"type": "string", "default": "", "description": "x"}
    drift = pulumi_config_drift(declared)
    assert sorted(line.split(":")[0] for line in drift) == ["arch", "branch", "clusterName", "colour", "replicas", "replicas"]
    assert "replicas: default 2, schema says ''" in drift and "replicas: type 'integer', schema says None" in drift


def test_drifted_args_are_caught() -> None:
    class StorageArgs(typing.TypedDict, total=False):
        kind: str
        size_gib: str  # drifted type
        iops: int
        throughput_mibps: int
        speed: int  # not in the schema

    classes = {**component_classes(), "StorageArgs": StorageArgs}
    docs = {**component_docs(), "StorageArgs": {"kind": "EBS or metal. (default ``ebs``)",
                                                "size_gib": "(default 200)", "iops": "(default 3000)",
                                                "throughput_mibps": "(default 125)"}}
    drift = args_drift(schema.STORAGE, classes, docs)
    assert "StorageArgs.speed: not in the schema" in drift
    assert "StorageArgs.volume_type: in the schema (volumeType), missing" in drift
    assert any(line.startswith("StorageArgs.size_gib: type") for line in drift)
    assert any("lacks '(default 100)'" in line for line in drift)
    assert "StorageArgs.kind: docstring does not name the choice ``metal``" in drift
    # The real module, with the drift of the past: no branch key, stack_kind "only regional".
    docs = component_docs()
    docs["PostgresClusterArgs"].pop("branch")
    docs["PostgresClusterArgs"]["stack_kind"] = "Deployment shape; only ``regional``."
    classes = component_classes()
    hints = dict(typing.get_type_hints(classes["PostgresClusterArgs"]))
    hints.pop("branch")
    old = typing.TypedDict("PostgresClusterArgs", hints, total=False)  # type: ignore[misc]
    drift = args_drift(schema.TOP, {**classes, "PostgresClusterArgs": old}, docs)
    assert "PostgresClusterArgs.branch: in the schema (branch), missing" in drift
    assert "PostgresClusterArgs.stack_kind: docstring does not name the choice ``branch``" in drift


def _spec_keys(obj: Any) -> set[str]:
    import dataclasses

    return {f.name for f in dataclasses.fields(obj)}


def test_every_schema_default_is_the_spec_default() -> None:
    """No config at all builds a spec whose every fixed-default field holds the schema's default."""
    spec = build_spec({}, stack="dev", region=REGION, region_azs=REGION_AZS)
    parts = {"storage": spec.storage, "network": spec.network, "backup": spec.backup}
    checked = 0
    for f in schema.TOP.fields:
        holder: Any = spec
        fields: Sequence[Field] = [f]
        if f.group is not None:
            if f.key not in parts:
                continue
            holder, fields = parts[f.key], f.group.fields
        for g in fields:
            if g.default is not None and g.arg in _spec_keys(holder):
                assert getattr(holder, g.arg) == g.default, g.key
                checked += 1
    assert checked >= 15


def test_args_and_config_report_the_same_problem_in_their_own_spelling() -> None:
    for values, style, key in (({"network": {"vpcCidr": "10.0.0.0/8"}}, "config", "pgha:network.vpcCidr"),
                               ({"network": {"vpc_cidr": "10.0.0.0/8"}}, "args", "network.vpc_cidr")):
        with pytest.raises(SpecError) as caught:
            build_spec(values, stack="dev", region=REGION, region_azs=REGION_AZS, style=style)
        (problem,) = caught.value.problems
        assert problem.path == ("network", "vpcCidr") and problem.key == key
        assert str(caught.value).splitlines()[1].startswith(f"  - {key} = ")


def test_branch_args_build_a_branch() -> None:
    spec = build_spec({"stack_kind": "branch", "cluster_name": "pg-feature",
                       "branch": {"source_bucket": "pg-a-backups", "source_stanza": "pg-a"}},
                      stack="feature", region=REGION, region_azs=REGION_AZS, style="args")
    assert spec.restore is not None and spec.restore.source_stanza == "pg-a" and spec.replicas == 0


def test_a_branch_stack_file_gets_the_branch_defaults_through_pulumi_yaml(tmp_path) -> None:
    """Pulumi applies Pulumi.yaml's defaults to every stack: a typed default there (replicas 2,
    rpo 0) would turn every branch stack into a three-node synchronous cluster."""
    from pgha.spec.stackfile import read_stack_config

    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.feature.yaml").write_text(yaml.safe_dump({"config": {
        "aws:region": REGION, "pgha:stackKind": "branch",
        "pgha:branch": {"sourceBucket": "pg-a-backups", "sourceStanza": "pg-a"}}}))
    values, region = read_stack_config(tmp_path, "feature")
    spec = build_spec(values, stack="feature", region=region, region_azs=REGION_AZS)
    assert (spec.replicas, spec.rpo) == (0, schema.BRANCH_SINGLE_NODE_RPO)
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump({"config": {"aws:region": REGION}}))
    values, region = read_stack_config(tmp_path, "dev")
    regional = build_spec(values, stack="dev", region=region, region_azs=REGION_AZS)
    assert (regional.replicas, regional.rpo) == (2, 0)
