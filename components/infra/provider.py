"""pgha's components as a Pulumi package for every language (``pulumi package add``).

``PghaProvider`` is Pulumi's own component provider (``ComponentProvider``: the schema inferred
from the components' type annotations, ``construct`` mapping the wire's camelCase inputs back to
the Python names) with two corrections:

- input names come from ``spec.schema``, the stack config's names: the analyser camel-cases
  ``size_gib`` to ``sizeGib`` where the config (and a TypeScript or YAML user reading its docs)
  says ``sizeGiB``;
- type names drop the Python ``Args`` suffix (``Storage``; the cluster's own args ``Cluster``):
  SDK generators append ``Args`` to input types themselves, and a type ``PostgresClusterArgs``
  would be the very name Go's SDK gives the ``PostgresCluster`` resource's args;
- an integer input sent as a float (every number on the wire is one) reaches the component as
  an ``int``, so the spec's validation sees what a Python caller would pass;
- a ``SpecError`` names each key as the program spelled it (``storage.sizeGiB``), not as Python does,
  and so do the descriptions (a docstring's ````vpc_id```` reads ````vpcId````).

``plugin/__main__.py`` (named by PulumiPlugin.yaml) hosts it.
"""

import dataclasses
import importlib.metadata
import json
import re
from typing import Any, Iterable, Mapping

import pulumi
from pulumi.provider.experimental.analyzer import PropertyDefinition, PropertyType
from pulumi.provider.experimental.component import ComponentProvider
from pulumi.provider.experimental.schema import generate_schema
from pulumi.provider.provider import ConstructResult
from pulumi.provider.server import ComponentInitError

from ..spec import SpecError, schema
from .cluster import PostgresCluster
from .kubernetes import Observability

PACKAGE = "pgha"
COMPONENTS: tuple[type[pulumi.ComponentResource], ...] = (PostgresCluster, Observability)
# Python TypedDict -> schema type name (see the module docstring).
TYPE_NAMES: dict[str, str] = {schema.TOP.args_class: "Cluster",
                              **{g.args_class: g.args_class.removesuffix("Args") for g in schema.GROUPS.values()}}


def package_version() -> str:
    """The installed pgha's version: the schema's, so generated SDKs name the release they came from."""
    return importlib.metadata.version(PACKAGE)


class PghaProvider(ComponentProvider):
    """Pulumi's component provider for pgha's components, with the stack config's input names."""

    def __init__(self, version: str | None = None) -> None:
        version = version or package_version()
        super().__init__(list(COMPONENTS), PACKAGE, None, version)
        groups = {g.args_class: g for g in [schema.TOP, *schema.GROUPS.values()]}
        for type_def in self._type_defs.values():
            if type_def.name in groups:
                type_def.properties, type_def.properties_mapping = _renamed(
                    type_def.properties, type_def.properties_mapping, groups[type_def.name])
        top = self._component_defs[PostgresCluster.__name__]
        top.inputs, top.inputs_mapping = _renamed(top.inputs, top.inputs_mapping, schema.TOP)
        self._type_defs = {TYPE_NAMES.get(key, key): type_def for key, type_def in self._type_defs.items()}
        for key, type_def in self._type_defs.items():
            type_def.name = key
            _retype(type_def.properties.values())
        for component in self._component_defs.values():
            _retype([*component.inputs.values(), *component.outputs.values()])
        self._describe_in_schema_names()
        self.package: dict[str, Any] = generate_schema(PACKAGE, version, None, self._component_defs,
                                                       self._type_defs, self._dependencies).to_json()
        self.schema = json.dumps(self.package)

    def _describe_in_schema_names(self) -> None:
        """Python names quoted in the docstrings (````vpc_id````) -> the schema's (````vpcId````)."""
        names: dict[str, str] = {}
        for definition in [*self._component_defs.values(), *self._type_defs.values()]:
            for mappings in (getattr(definition, "inputs_mapping", {}), getattr(definition, "outputs_mapping", {}),
                             getattr(definition, "properties_mapping", {})):
                names.update({arg: wire for wire, arg in mappings.items() if arg != wire})

        def schema_names(text: str | None) -> str | None:
            return text and re.sub(r"``(\w+)``", lambda m: f"``{names.get(m[1], m[1])}``", text)

        def walk(props: Iterable[PropertyDefinition | None]) -> None:
            for prop in props:
                if prop is not None:
                    prop.description = schema_names(prop.description)
                    walk([prop.items, prop.additional_properties])

        for component in self._component_defs.values():
            component.description = schema_names(component.description)
            walk([*component.inputs.values(), *component.outputs.values()])
        for type_def in self._type_defs.values():
            type_def.description = schema_names(type_def.description)
            walk(type_def.properties.values())

    def construct(self, name: str, resource_type: str, inputs: pulumi.Inputs,
                  options: pulumi.ResourceOptions | None = None) -> ConstructResult:
        try:
            return super().construct(name, resource_type, inputs, options)
        except ComponentInitError as error:
            if isinstance(error.inner, SpecError):
                raise ComponentInitError(in_input_names(error.inner)) from error.inner
            raise

    def map_input_properties(self, inputs: Any, properties: dict[str, PropertyDefinition],
                             mapping: dict[str, str], component_name: str, property_path: str) -> Any:
        mapped = dict(super().map_input_properties(inputs, properties, mapping, component_name, property_path))
        # The base class converts integers but then stores the raw float; a fractional value stays a
        # float for validation to refuse by name.
        for wire_name, prop in properties.items():
            value = mapped.get(mapping[wire_name])
            if prop.type == PropertyType.INTEGER and isinstance(value, float) and value.is_integer():
                mapped[mapping[wire_name]] = int(value)
        return mapped


def _renamed(properties: Mapping[str, PropertyDefinition], mapping: Mapping[str, str],
             group: schema.Group) -> tuple[dict[str, PropertyDefinition], dict[str, str]]:
    """``properties``/``mapping`` keyed by the config's names (``sizeGiB``), in the analyser's order."""
    key_of = {f.arg: f.key for f in group.fields}
    out: dict[str, PropertyDefinition] = {}
    names: dict[str, str] = {}
    for wire_name, prop in properties.items():
        arg = mapping[wire_name]
        key = key_of.get(arg, wire_name)
        out[key], names[key] = prop, arg
    return out, names


def _retype(properties: Iterable[PropertyDefinition | None]) -> None:
    """Point each reference to one of pgha's types at its schema name (TYPE_NAMES), nested too."""
    for prop in properties:
        if prop is None:
            continue
        prefix, _, name = (prop.ref or "").rpartition(":")
        if prefix == f"#/types/{PACKAGE}:index" and name in TYPE_NAMES:
            prop.ref = f"{prefix}:{TYPE_NAMES[name]}"
        _retype([prop.items, prop.additional_properties])


def in_input_names(error: SpecError) -> SpecError:
    """``error`` with each of pgha's keys as the package schema spells it (``storage.sizeGiB``)."""
    problems = [dataclasses.replace(p, key="") if p.key == schema.key_name(p.path, p.given, style=error.style)
                else p for p in error.problems]  # keys outside pgha's (aws:region) stay as they are
    return SpecError(problems, "inputs")


def package_schema(version: str | None = None) -> dict[str, Any]:
    """The package schema ``pulumi package add`` generates SDKs from."""
    return PghaProvider(version).package


def host(args: list[str]) -> None:
    """Serve the provider to the engine (``args``: the engine's command line for a plugin)."""
    pulumi.provider.main(PghaProvider(), args)
