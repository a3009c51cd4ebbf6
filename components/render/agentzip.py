"""The node agent as one file: ``pgha-node.pyz``, a zipapp of ``pgha.agent`` and ``pgha.contract``.

Deterministic (sorted entries, a fixed timestamp and mode, fixed compression), so its sha256,
and with it the content-addressed S3 key of render.userdata, changes only when the agent's
source does. The zip holds an empty ``pgha/__init__.py``: the real one is the Pulumi-side
package, and nodes have neither pulumi nor jinja2.
"""

import functools
import io
import zipfile
from importlib import resources
from importlib.resources.abc import Traversable

# zip's epoch: the earliest timestamp the format can carry.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_MAIN = "import sys\n\nfrom pgha.agent.cli import main\n\nsys.exit(main())\n"


def _sources(root: Traversable, prefix: str) -> list[tuple[str, bytes]]:
    out = []
    for entry in root.iterdir():
        if entry.is_dir():
            if entry.name != "__pycache__":
                out += _sources(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(".py"):
            out.append((prefix + entry.name, entry.read_bytes()))
    return out


def agent_members() -> list[tuple[str, bytes]]:
    """(archive name, bytes) of every file in the zipapp, sorted by name."""
    pgha = resources.files("pgha")
    members = _sources(pgha.joinpath("agent"), "pgha/agent/")
    members += [("pgha/__init__.py", b""), ("pgha/contract.py", pgha.joinpath("contract.py").read_bytes()),
                ("__main__.py", _MAIN.encode())]
    return sorted(members)


@functools.cache
def agent_zipapp() -> bytes:
    """The bytes of pgha-node.pyz (run: ``python3 pgha-node.pyz COMMAND``)."""
    buf = io.BytesIO()
    # A zipapp may start with a shebang; Debian's python3 runs it by path (paths.python), so none.
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in agent_members():
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3  # Unix, whatever the build host
            zf.writestr(info, data, compresslevel=9)
    return buf.getvalue()


def fetcher_source() -> str:
    """pgha/agent/fetch.py as text: the bootstrap's fetcher of the zipapp (user-data)."""
    return resources.files("pgha").joinpath("agent", "fetch.py").read_text()
