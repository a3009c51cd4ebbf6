"""The rehearsal of EC2 on this machine (``pgha.local.cluster``). Its defaults live here, with no
imports, so the command line shows them without loading the runner."""

from pathlib import Path

DEFAULT_ROOT = Path("/srv/pgha-local")
# Members on <prefix><n> in namespaces of their own, the host on <prefix>254 (the bridge).
DEFAULT_PREFIX = "10.213.0."
DEFAULT_S3_PORT = 9000  # moto's HTTP port on the host; its TLS endpoint is the next one
