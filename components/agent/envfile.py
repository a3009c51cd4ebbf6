"""EnvironmentFile and libpq conninfo quoting."""

from typing import Any, Iterable

from .errors import PROG


def env_quote(value: str) -> str:
    """Quote for a systemd EnvironmentFile that is also valid POSIX sh: double quotes,
    escaping backslash, double quote, dollar and backquote (both parsers accept these)."""
    out = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return f'"{out}"'


def env_unquote(text: str) -> dict[str, str]:
    """Parse what env_file() writes (KEY="value" lines, # comments)."""
    result = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, raw = line.split("=", 1)
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw, value, i = raw[1:-1], [], 0
            while i < len(raw):
                if raw[i] == "\\" and i + 1 < len(raw):
                    value.append(raw[i + 1])
                    i += 2
                else:
                    value.append(raw[i])
                    i += 1
            result[key.strip()] = "".join(value)
        else:
            result[key.strip()] = raw
    return result


def env_file(pairs: Iterable[tuple[str, str]]) -> str:
    lines = [f"# written by {PROG} secrets; do not edit"]
    lines += [f"{k}={env_quote(v)}" for k, v in pairs]
    return "\n".join(lines) + "\n"


def conninfo(**params: Any) -> str:
    """libpq key=value string, values quoted as libpq (and lib/pq) expect."""
    parts = []
    for key, value in params.items():
        value = str(value)
        if value == "" or any(c in value for c in " \\'"):
            value = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        parts.append(f"{key}={value}")
    return " ".join(parts)
