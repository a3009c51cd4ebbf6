"""PostgreSQL's own parameter list, per major, and the check of a value against it.

``pgha/data/pg<major>-parameters.json`` is ``pg_settings`` of the node image's server
(scripts/pg_parameters.py writes it and records its provenance; tests/test_pg_parameters.py
compares it with the image's ``postgres --describe-config``). A value is checked the way the
server would parse it: a boolean spelling, an integer or real with one of the units PostgreSQL
takes for that parameter and within its range, one of an enum's values, or a single-line string.
"""

import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, Mapping

# PostgreSQL's own spellings of a boolean (it also takes unique prefixes; pgha asks for the words).
BOOL_WORDS = frozenset({"on", "off", "true", "false", "yes", "no", "1", "0"})
# Units PostgreSQL accepts, in bytes and in milliseconds (guc.c's memory_unit_conversion_table
# and time_unit_conversion_table; units are case-sensitive there).
MEMORY_UNITS: Mapping[str, float] = {"B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}
TIME_UNITS: Mapping[str, float] = {"us": 0.001, "ms": 1, "s": 1000, "min": 60000, "h": 3600000, "d": 86400000}
# The longest value pgha passes on: a parameter value is one line of postgresql.conf, and every
# member's manifest in S3 carries them all (pg_settings' longest sensible values are lists of
# libraries or a search_path, well under this).
MAX_VALUE_LENGTH = 1024

_NUMBER = re.compile(r"(?P<number>-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?) ?(?P<unit>[A-Za-z]*)")
_INTEGER = re.compile(r"-?[0-9]+")


@dataclass(frozen=True)
class Setting:
    """One row of pg_settings: name, vartype, unit, min/max, enum values, context."""

    name: str
    vartype: str
    unit: str | None
    min: float | None
    max: float | None
    enumvals: tuple[str, ...]
    context: str


@functools.cache
def settings(major: int) -> Mapping[str, Setting]:
    """Every parameter of PostgreSQL ``major`` by lowercase name (PostgreSQL's names are case-blind)."""
    text = resources.files("pgha.data").joinpath(f"pg{major}-parameters.json").read_text()
    rows = json.loads(text)["parameters"]
    return {r["name"].lower(): Setting(r["name"], r["vartype"], r["unit"], r["min"], r["max"],
                                       tuple(r["enumvals"] or ()), r["context"]) for r in rows}


@functools.cache
def provenance(major: int) -> Mapping[str, str]:
    text = resources.files("pgha.data").joinpath(f"pg{major}-parameters.json").read_text()
    return json.loads(text)["provenance"]


def _base(unit: str | None) -> tuple[Mapping[str, float], float] | None:
    """The unit table a parameter's unit belongs to, and the size of one base unit in it."""
    if not unit:
        return None
    for table in (MEMORY_UNITS, TIME_UNITS):
        match = re.fullmatch(r"([0-9]*)([A-Za-z]+)", unit)
        if match and match.group(2) in table:
            return table, (int(match.group(1)) if match.group(1) else 1) * table[match.group(2)]
    return None


def _range_text(s: Setting) -> str:
    unit = f" {s.unit}" if s.unit else ""

    def shown(v: float | None) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    return f"from {shown(s.min)} to {shown(s.max)}{unit}"


def check_value(s: Setting, value: Any) -> str | None:
    """Why PostgreSQL would not take ``value`` for ``s`` (the problem's "allowed" text), or None."""
    if s.vartype == "bool":
        if isinstance(value, bool) or (isinstance(value, str) and value.lower() in BOOL_WORDS):
            return None
        return "must be a boolean: true or false (or on, off, yes, no, 1, 0)"
    if s.vartype == "enum":
        if isinstance(value, bool) and "on" in s.enumvals:
            return None
        if isinstance(value, str) and value.lower() in (e.lower() for e in s.enumvals):
            return None
        return f"must be one of {', '.join(s.enumvals)}"
    if s.vartype in ("integer", "real"):
        return _check_number(s, value)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return "must be a string"
    return None


def _check_number(s: Setting, value: Any) -> str | None:
    base = _base(s.unit)
    kind = "an integer" if s.vartype == "integer" else "a number"
    units = (f" with an optional unit ({', '.join(base[0])}; bare numbers are in {s.unit})" if base
             else "")
    wanted = f"must be {kind}{units} {_range_text(s)}"
    if isinstance(value, bool):
        return wanted
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
        if s.vartype == "integer" and isinstance(value, float) and not value.is_integer() and not base:
            return wanted
    elif isinstance(value, str):
        match = _NUMBER.fullmatch(value.strip()) if value == value.strip() else None
        if match is None:
            return wanted
        number, unit = float(match.group("number")), match.group("unit")
        if s.vartype == "integer" and not unit and not _INTEGER.fullmatch(match.group("number")):
            return wanted
    else:
        return wanted
    if not math.isfinite(number):
        return wanted
    if unit:
        if base is None or unit not in base[0]:
            return wanted
        number = number * base[0][unit] / base[1]
    if s.vartype == "integer":
        number = round(number)
    if (s.min is not None and number < s.min) or (s.max is not None and number > s.max):
        return wanted
    return None
